/** @file aorm.h
 * umbrella header: include this to get the whole public API. */
#ifndef AORM_H
#define AORM_H

#define AORM_VERSION_MAJOR 0
#define AORM_VERSION_MINOR 1
#define AORM_VERSION_PATCH 0

#include "export.h"
#include "error.h"
#include "loop.h"
#include "result.h"
#include "engine.h"
#include "model.h"
#include "sql.h"
#include "session.h"
#include "loaders.h"
#include "migrate.h"
#include "redis.h"
#include "cache.h"
#include "hosts.h"

#endif /* AORM_H */
