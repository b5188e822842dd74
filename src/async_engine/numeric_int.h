/* numeric_int.h -- private to src/async_engine: the constants of
 * PostgreSQL's binary numeric format, in one place for the encoder
 * (params.c) and the decoder (result.c).
 *
 * A binary numeric is int16 ndigits, int16 weight, uint16 sign, uint16
 * dscale, then ndigits base-10000 digits, most significant first (as in
 * the server's src/backend/utils/adt/numeric.c, numeric_send/recv). */
#ifndef AORM_NUMERIC_INT_H
#define AORM_NUMERIC_INT_H

/* Sign words. */
#define NUMERIC_POS 0x0000
#define NUMERIC_NEG 0x4000
#define NUMERIC_NAN 0xC000
#define NUMERIC_PINF 0xD000
#define NUMERIC_NINF 0xF000
/* The largest display scale the format can carry. */
#define NUMERIC_DSCALE_MAX 0x3FFF
/* The base of one digit. */
#define NUMERIC_NBASE 10000

#endif /* AORM_NUMERIC_INT_H */
