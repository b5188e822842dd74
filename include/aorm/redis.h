/** @file redis.h
 * a Redis client on the caller's aorm_loop: hiredis's async protocol
 * core, driven by aorm's watchers and timers, with the deadlines,
 * reconnects and circuit breaker that hiredis 0.14 lacks.
 *
 * One aorm_redis is one connection to one server (TCP or a unix socket),
 * kept open and re-opened after failures. Commands are queued and return
 * at once; at the loop's before-poll stage everything queued in that turn
 * is written as one pipeline (one write); replies come back in order and
 * are handed to each command's callback, exactly once, never from inside
 * the call that queued it.
 *
 * Connecting: after the socket connects, the client sends, as its first
 * commands and before any command of the caller, `AUTH [username]
 * password` (when a password is set), `SELECT db` (when db is not 0) and
 * `CLIENT SETNAME name` (when a name is set). Commands queued meanwhile
 * wait and go out once the server has accepted all of these. The connect
 * timeout covers the socket connect and these replies.
 *
 * Failures, as the caller sees them:
 *   - a command not answered within its deadline fails with AORM_ETIMEOUT.
 *     A Redis connection cannot skip one reply, so the connection is then
 *     closed: every other command in flight on it fails with
 *     AORM_ECONNLOST (it was sent; whether it ran is unknown), commands not
 *     yet sent wait for the next connection;
 *   - a lost connection fails the commands in flight with AORM_ECONNLOST;
 *     data that is not the Redis protocol (or a reply nothing asked for)
 *     closes the connection and fails them with AORM_EPROTOCOL;
 *   - a failed connection attempt (refused, timed out, handshake refused)
 *     fails the commands waiting for it with AORM_ECONNECT, or AORM_EAUTH
 *     when the server refused the credentials;
 *   - a Redis error reply (`-ERR ...`, `-WRONGTYPE ...`) is AORM_ESERVER
 *     with the server's text as the message (AORM_EAUTH for `-NOAUTH` and
 *     `-WRONGPASS`); the connection stays open.
 * After a failure the client reconnects by itself, after a delay that
 * doubles from reconnect_min up to reconnect_max and returns to
 * reconnect_min once the server answers again.
 *
 * Circuit breaker: after breaker_threshold consecutive failures (failed
 * connection attempts and lost or dropped connections; a reply of any
 * kind ends the run) the breaker opens: for breaker_cooldown seconds every
 * new command is refused at once with AORM_ECONNECT (returned by the call,
 * no callback) and waiting commands fail. Then one connection is tried
 * (half-open); commands are accepted again and wait for it; the first
 * answer closes the breaker, a failure opens it again.
 *
 * Secrets: the password is copied, used only to build the AUTH command,
 * never logged, and wiped (explicit_bzero) from aorm's copies and from the
 * connection's output buffer once written, and from the copy in the
 * client when it is freed.
 *
 * Host names: `host` may be an IPv4 or IPv6 address, or a name. A name is
 * resolved once, by aorm_redis_new() (a blocking getaddrinfo), and every
 * connection attempt reuses the address found.
 *
 * Threading: one loop, one thread. Nothing here is thread-safe.
 *
 * Connection hooks: on_ready(r, hook_user) runs each time a connection
 * becomes ready (after AUTH / SELECT / CLIENT SETNAME were accepted),
 * before the commands that waited for it are handed over: commands it
 * queues go out first, in the order it queues them (e.g. CLIENT TRACKING,
 * which must precede every read). on_lost(r, hook_user) runs once when a
 * ready connection ends (lost, closed after a deadline or a protocol
 * error), after the commands in flight on it were failed, and before the
 * reconnect. Neither runs for a connection attempt that never became
 * ready, nor when the client is freed. Both run from the loop and may
 * queue commands (on_lost's wait for the next connection) or free the
 * client.
 *
 * Subscriber clients: aorm_redis_subscriber_new() makes a client whose
 * connection SUBSCRIBEs to fixed channels (again after every reconnect,
 * right after on_ready's commands) and hands each message to a callback.
 * The server accepts nothing but pub/sub commands on such a connection,
 * so a subscriber takes commands only from inside its on_ready hook (they
 * go out before SUBSCRIBE, e.g. CLIENT ID); anywhere else
 * aorm_redis_command() returns AORM_EMISUSE. The confirmation of SUBSCRIBE
 * has the command deadline (command_timeout) like any reply: when it does
 * not come, the connection is closed and reconnected. A connection that
 * died silently (a NAT or firewall forgot it, the server is stopped)
 * shows no error, so a subscriber that received nothing for
 * subscriber_ping seconds sends PING, and closes the connection when no
 * answer comes within command_timeout.
 *
 * Replies are hiredis's `redisReply`; include hiredis/hiredis.h to read
 * them. TLS to Redis needs hiredis 1.0 or newer and is not offered.
 *
 * Handles and ownership: aorm_redis is made by aorm_redis_new() and owned
 * by the caller, who frees it with aorm_redis_free() (NULL accepted)
 * before the aorm_loop. Arguments of a command are copied before the call
 * returns; a reply is borrowed for its callback's duration.
 *
 * Callbacks: every command callback runs once, on the loop's thread,
 * never inside the call that queued it, and may call any function of this
 * client, aorm_redis_free() included (deferred until it returns); so
 * may the connection hooks and a subscriber's message and subscribed
 * callbacks. The log callback must not call the client.
 */
#ifndef AORM_REDIS_H
#define AORM_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "error.h"
#include "export.h"
#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

struct redisReply; /**< hiredis's reply object (hiredis/hiredis.h) */

typedef struct aorm_redis aorm_redis;

/** Connection hook (on_ready, on_lost, a subscriber's on_subscribed). */
typedef void (*aorm_redis_conn_cb)(aorm_redis *r, void *user);

/* ---- options ------------------------------------------------------------ */

typedef struct aorm_redis_options {
    const char *host;         /**< address or name ("127.0.0.1"); copied */
    int port;                 /**< TCP port (6379) */
    const char *unix_path;    /**< when set: connect to this unix socket instead of host and port; copied */
    const char *username;     /**< ACL user for AUTH (Redis 6+); NULL: `AUTH password` (the default user) */
    const char *password;     /**< NULL: no AUTH. Copied; never logged; wiped when freed */
    int db;                   /**< database selected after connecting when not 0 (0) */
    const char *client_name;  /**< CLIENT SETNAME after connecting when set (NULL); no spaces; copied */
    double connect_timeout;   /**< seconds for the connect and the AUTH/SELECT/SETNAME replies (1) */
    double command_timeout;   /**< default deadline of every command in seconds; 0 none (1) */
    double reconnect_min;     /**< first reconnect delay after a failure, seconds (0.05) */
    double reconnect_max;     /**< reconnect backoff ceiling, seconds (2) */
    int breaker_threshold;    /**< consecutive failures that open the breaker; 0 never opens (5) */
    double breaker_cooldown;  /**< seconds the open breaker refuses commands (1) */
    double subscriber_ping;   /**< subscribers: PING after this many seconds without data; no answer within
                                   command_timeout closes the connection; 0 never (2) */
    aorm_log_fn log;          /**< NULL: nothing is logged */
    void *log_user;
    aorm_log_level log_level; /**< most verbose level passed to log (AORM_LOG_WARN) */
    aorm_redis_conn_cb on_ready; /**< a connection became ready; its commands go first (NULL) */
    aorm_redis_conn_cb on_lost;  /**< a ready connection ended (NULL) */
    void *hook_user;             /**< passed to on_ready and on_lost */
} aorm_redis_options;

/** Fills every field with its default (host "127.0.0.1", port 6379). */
AORM_API void aorm_redis_options_init(aorm_redis_options *o);

/* ---- the client --------------------------------------------------------- */

/** Creates a client on `loop` and starts connecting. Returns NULL on a
 * NULL loop or options, an invalid option (port out of range, negative
 * timeouts, a client name with spaces, a unix path too long), a host name
 * that does not resolve, or out of memory; the reason goes to the log
 * callback. The loop must outlive the client. */
AORM_API aorm_redis *aorm_redis_new(aorm_loop *loop, const aorm_redis_options *o);

/** Fails every waiting and in-flight command with AORM_ECANCELED (each
 * callback exactly once), closes the connection and frees the client.
 * From outside any callback of this client the callbacks run inside this
 * call. From inside one of its callbacks the free is deferred until that
 * callback returns; replies that arrive meanwhile are delivered as
 * AORM_ECANCELED too, and new commands are refused with AORM_ECLOSED.
 * Accepts NULL. */
AORM_API void aorm_redis_free(aorm_redis *r);

AORM_API aorm_loop *aorm_redis_loop(const aorm_redis *r);
AORM_API void aorm_redis_set_data(aorm_redis *r, void *data);
AORM_API void *aorm_redis_data(const aorm_redis *r);

/* ---- commands ----------------------------------------------------------- */

/** Outcome of a command: exactly one of reply / err is non-NULL. The reply
 * is borrowed: hiredis frees it when the callback returns (copy what you
 * keep). An error reply of the server at the top level arrives as err
 * (AORM_ESERVER, message = the server's text); errors nested in an array
 * reply (EXEC) stay inside the reply. err->sqlstate is always "". The
 * callback may call any function of this client, aorm_redis_free()
 * included. */
typedef void (*aorm_redis_cb)(aorm_redis *r, struct redisReply *reply, const aorm_error *err, void *user);

/** Per-command options. */
typedef struct aorm_redis_cmd_options {
    double deadline; /**< seconds from submission; 0 the client's command_timeout; < 0 none */
} aorm_redis_cmd_options;

/** Fills every field with its default: the client's command_timeout (the
 * same as passing NULL options). */
AORM_API void aorm_redis_cmd_options_init(aorm_redis_cmd_options *o);

/** Queues one command given as arguments (binary-safe: argvlen may be
 * NULL for NUL-terminated strings). Everything is copied before the call
 * returns. `opts` may be NULL; `cb` may be NULL when the outcome does not
 * matter. Returns 0 (cb will run once, later) or a negative code (cb will
 * never run): AORM_EMISUSE (no arguments, or a command that would change
 * the connection itself: AUTH, SELECT, HELLO, QUIT, RESET, MONITOR, SYNC,
 * PSYNC, CLIENT REPLY and the (un)subscribe family: set them in the
 * options, or use a dedicated connection), AORM_ENOMEM, AORM_ECLOSED (the
 * client is being freed), AORM_ECONNECT (the circuit breaker is open). */
AORM_API int aorm_redis_command_argv(aorm_redis *r, int argc, const char *const *argv, const size_t *argvlen,
                                     const aorm_redis_cmd_options *opts, aorm_redis_cb cb, void *user);

/** Same, with a hiredis format string: `%s` a C string, `%b` a binary
 * value (pointer, size_t length), `%%`; each `%s`/`%b` is one argument
 * whatever it holds (never split on spaces), and plain words of `fmt` are
 * split on spaces. A format hiredis cannot parse is AORM_EMISUSE. */
AORM_API int aorm_redis_command(aorm_redis *r, const aorm_redis_cmd_options *opts, aorm_redis_cb cb, void *user,
                                const char *fmt, ...);

/* ---- subscribers ---------------------------------------------------------- */

/** One pub/sub message: the channel (channel_len bytes, not
 * NUL-terminated) and the message as the server sent it (a bulk string
 * from PUBLISH; for `__redis__:invalidate` an array of keys, or nil after
 * FLUSHALL/FLUSHDB). Borrowed for the callback's duration. The callback
 * may free the client. */
typedef void (*aorm_redis_message_cb)(aorm_redis *r, const char *channel, size_t channel_len,
                                      const struct redisReply *message, void *user);

/** Creates a subscriber client (see "Subscriber clients" above) for the
 * nchannels channels (>= 1, copied; exact names, no patterns). on_message
 * receives every message; on_subscribed (may be NULL) runs each time the
 * server confirmed all channels on a new connection. Returns NULL as
 * aorm_redis_new() does, or for no channels. Free with aorm_redis_free(). */
AORM_API aorm_redis *aorm_redis_subscriber_new(aorm_loop *loop, const aorm_redis_options *o,
                                               const char *const *channels, int nchannels,
                                               aorm_redis_message_cb on_message, aorm_redis_conn_cb on_subscribed,
                                               void *user);

/** True while the current connection of a subscriber is ready and the
 * server confirmed every channel on it. */
AORM_API bool aorm_redis_subscribed(const aorm_redis *r);

/* ---- state and statistics ------------------------------------------------ */

typedef enum aorm_redis_breaker {
    AORM_REDIS_BREAKER_CLOSED = 0,   /**< normal operation */
    AORM_REDIS_BREAKER_OPEN = 1,     /**< refusing commands until the cooldown ends */
    AORM_REDIS_BREAKER_HALF_OPEN = 2 /**< cooldown over: one connection is being tried */
} aorm_redis_breaker;

/** Counters since the client was created, and its current state. */
typedef struct aorm_redis_stats {
    uint64_t commands;         /**< commands accepted (calls that returned 0) */
    uint64_t replies;          /**< replies to those commands, error replies included */
    uint64_t server_errors;    /**< error replies (AORM_ESERVER and AORM_EAUTH) */
    uint64_t errors;           /**< callbacks that received an error, of any kind */
    uint64_t timeouts;         /**< commands failed with AORM_ETIMEOUT */
    uint64_t rejected;         /**< commands refused at once by the open breaker */
    uint64_t writes;           /**< socket writes (one per pipeline, more only when the socket was full) */
    uint64_t connects;         /**< connections that became ready */
    uint64_t connect_failures; /**< connection attempts that failed (handshake included) */
    uint64_t reconnects;       /**< connection attempts after the first one */
    uint64_t connections_lost; /**< ready connections lost or closed after a deadline */
    uint64_t protocol_errors;  /**< connections closed because the server sent no valid reply */
    uint64_t breaker_opens;    /**< times the breaker opened */
    aorm_redis_breaker breaker;
    int consecutive_failures;  /**< the current run of failures */
    bool connected;            /**< a connection is ready for commands */
    int in_flight;             /**< commands sent and not yet answered */
    int waiting;               /**< commands waiting for a ready connection */
    uint64_t messages;         /**< pub/sub messages received (subscribers) */
    bool subscribed;           /**< aorm_redis_subscribed() */
} aorm_redis_stats;

AORM_API void aorm_redis_stats_get(const aorm_redis *r, aorm_redis_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* AORM_REDIS_H */
