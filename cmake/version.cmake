# SPDX-License-Identifier: Apache-2.0
# Sets PINGUARD_VERSION_STRING, the version that `pinguard --version` and the
# pinguard_build_info metric report, once at configure time:
#   - the PINGUARD_VERSION cache value when a packager sets one;
#   - else `git describe --tags --always --dirty` of this source tree (a tree
#     with no tag yet describes as <project version>-g<hash>[-dirty]);
#   - else, outside a git checkout (a release tarball, the container build),
#     PROJECT_VERSION.
# Only a checkout whose top level is this source directory counts, so a
# tarball unpacked inside some other repository does not take its version.
# A commit or checkout reruns CMake (the build depends on HEAD and its ref);
# "-dirty" is as it was at the last configure.

set(PINGUARD_VERSION "" CACHE STRING
  "Version string to report (empty: git describe, else the project version)")

set(PINGUARD_VERSION_STRING "${PROJECT_VERSION}")
if(PINGUARD_VERSION)
  set(PINGUARD_VERSION_STRING "${PINGUARD_VERSION}")
else()
  find_package(Git QUIET)
  if(GIT_FOUND)
    execute_process(COMMAND ${GIT_EXECUTABLE} rev-parse --show-toplevel --absolute-git-dir
      WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}
      OUTPUT_VARIABLE pg_git_dirs RESULT_VARIABLE pg_git_rc
      OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    if(pg_git_rc EQUAL 0)
      string(REPLACE "\n" ";" pg_git_dirs "${pg_git_dirs}")
      list(GET pg_git_dirs 0 pg_git_top)
      list(GET pg_git_dirs 1 pg_git_dir)
      file(REAL_PATH "${pg_git_top}" pg_git_top)
      file(REAL_PATH "${CMAKE_SOURCE_DIR}" pg_src_top)
      if(pg_git_top STREQUAL pg_src_top)
        execute_process(COMMAND ${GIT_EXECUTABLE} describe --tags --always --dirty
          WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}
          OUTPUT_VARIABLE pg_describe RESULT_VARIABLE pg_describe_rc
          OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
        if(pg_describe_rc EQUAL 0 AND pg_describe)
          if(pg_describe MATCHES "^[0-9a-f]+(-dirty)?$")
            set(pg_describe "${PROJECT_VERSION}-g${pg_describe}")
          endif()
          set(PINGUARD_VERSION_STRING "${pg_describe}")
        endif()
        # A commit moves the branch's ref, a checkout HEAD: either reconfigures.
        set(pg_git_deps HEAD packed-refs)
        file(READ "${pg_git_dir}/HEAD" pg_head)
        if(pg_head MATCHES "^ref: ([^\n]+)")
          list(APPEND pg_git_deps "${CMAKE_MATCH_1}")
        endif()
        foreach(f IN LISTS pg_git_deps)
          if(EXISTS "${pg_git_dir}/${f}")
            set_property(DIRECTORY ${CMAKE_SOURCE_DIR} APPEND PROPERTY
              CMAKE_CONFIGURE_DEPENDS "${pg_git_dir}/${f}")
          endif()
        endforeach()
      endif()
    endif()
  endif()
endif()
message(STATUS "pinguard version: ${PINGUARD_VERSION_STRING}")
