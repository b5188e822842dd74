/** @file export.h
 * symbol visibility for the aorm library.
 *
 * The library is built with -fvisibility=hidden; only declarations marked
 * AORM_API are exported from the shared object. AORM_STATIC (set by the
 * static target and by consumers of libaorm.a through the CMake package)
 * turns the attribute off. */
#ifndef AORM_EXPORT_H
#define AORM_EXPORT_H

#if defined(AORM_STATIC)
#define AORM_API
#elif defined(__GNUC__) || defined(__clang__)
#define AORM_API __attribute__((visibility("default")))
#else
#define AORM_API
#endif

#if defined(__GNUC__) || defined(__clang__)
#define AORM_NODISCARD __attribute__((warn_unused_result))
#else
#define AORM_NODISCARD
#endif

#endif /* AORM_EXPORT_H */
