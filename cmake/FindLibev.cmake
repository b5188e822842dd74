# FindLibev -- libev ships no pkg-config file on Debian; find it by hand.
# Defines Libev_FOUND, Libev_INCLUDE_DIR, Libev_LIBRARY and the imported
# target Libev::Libev.
find_package(PkgConfig QUIET)
if(PKG_CONFIG_FOUND)
  pkg_check_modules(PC_LIBEV QUIET libev)
endif()
find_path(Libev_INCLUDE_DIR NAMES ev.h HINTS ${PC_LIBEV_INCLUDE_DIRS} PATH_SUFFIXES libev)
find_library(Libev_LIBRARY NAMES ev HINTS ${PC_LIBEV_LIBRARY_DIRS})
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(Libev REQUIRED_VARS Libev_LIBRARY Libev_INCLUDE_DIR)
if(Libev_FOUND AND NOT TARGET Libev::Libev)
  add_library(Libev::Libev UNKNOWN IMPORTED)
  set_target_properties(Libev::Libev PROPERTIES
    IMPORTED_LOCATION "${Libev_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${Libev_INCLUDE_DIR}")
endif()
mark_as_advanced(Libev_INCLUDE_DIR Libev_LIBRARY)
