/* server.h -- one worker's HTTP side (server.c): the listening socket's
 * accept loop, connections, and the graceful stop. */
#ifndef HTTPD_SERVER_H
#define HTTPD_SERVER_H

#include "httpd.h"

/** Sets up the worker's loop, engine and handlers on the calling thread;
 * 0, or -1 with a message on stderr. */
int worker_init(worker *w);
/** Runs the loop (when run) until the worker has stopped (worker_stop,
 * then every connection closed), then frees sessions, engine and loops:
 * also what a failed worker_init() made. */
void worker_run(worker *w, bool run);
/** Asks the worker to stop, from any thread (async-signal unsafe). */
void worker_stop(worker *w);

#endif
