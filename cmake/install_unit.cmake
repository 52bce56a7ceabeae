# SPDX-License-Identifier: Apache-2.0
# Install-time step (install(SCRIPT), after install(CODE) set the PG_UNIT_*
# variables): copies a unit of deploy/systemd (pinguard.service, then
# pinguard-sync.service) into the unit directory
# with ExecStart and Documentation pointing at where this install put the
# binary and the docs. Runs at install time, so `cmake --install --prefix P`
# gets paths under P; DESTDIR staging keeps the final paths in the unit.

foreach(v IN ITEMS PG_UNIT_IN PG_UNIT_TMP PG_UNIT_BINDIR PG_UNIT_DOCDIR PG_UNIT_DIR)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "install_unit.cmake: ${v} is not set")
  endif()
endforeach()

function(pg_full out dir)
  if(IS_ABSOLUTE "${dir}")
    set(${out} "${dir}" PARENT_SCOPE)
  else()
    set(${out} "${CMAKE_INSTALL_PREFIX}/${dir}" PARENT_SCOPE)
  endif()
endfunction()
pg_full(bindir "${PG_UNIT_BINDIR}")
pg_full(docdir "${PG_UNIT_DOCDIR}")
pg_full(unitdir "${PG_UNIT_DIR}")

file(READ "${PG_UNIT_IN}" text)
foreach(old IN ITEMS "ExecStart=/usr/local/bin/pinguard "
                     "Documentation=file:///usr/local/share/doc/pinguard/README.md")
  string(FIND "${text}" "${old}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "install_unit.cmake: ${PG_UNIT_IN} has no line starting '${old}'")
  endif()
endforeach()
string(REPLACE "ExecStart=/usr/local/bin/pinguard " "ExecStart=${bindir}/pinguard " text "${text}")
string(REPLACE "Documentation=file:///usr/local/share/doc/pinguard/README.md"
               "Documentation=file://${docdir}/README.md" text "${text}")
get_filename_component(unit "${PG_UNIT_IN}" NAME)
file(WRITE "${PG_UNIT_TMP}/${unit}" "${text}")
file(INSTALL "${PG_UNIT_TMP}/${unit}" DESTINATION "${unitdir}"
  FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
