# run.cmake - the `install` test (registered by the top-level CMakeLists.txt):
#   1. cmake --install the build tree into a fresh prefix under PANTRY_WORK_DIR;
#   2. configure, build and run tests/consumer against it with find_package;
#   3. compile and run the same program with `pkg-config --cflags --libs pantry`.
# Inputs: PANTRY_BUILD_DIR, PANTRY_CONSUMER_DIR, PANTRY_WORK_DIR, CMAKE_C_COMPILER.
cmake_minimum_required(VERSION 3.16)

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer test: ${what} failed (${rc}):\n${out}\n${err}")
  endif()
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

set(prefix ${PANTRY_WORK_DIR}/prefix)
file(REMOVE_RECURSE ${PANTRY_WORK_DIR})
file(MAKE_DIRECTORY ${PANTRY_WORK_DIR})

run_step("cmake --install" ${CMAKE_COMMAND} --install ${PANTRY_BUILD_DIR} --prefix ${prefix})
foreach(f include/pantry.h)
  if(NOT EXISTS ${prefix}/${f})
    message(FATAL_ERROR "consumer test: ${f} was not installed")
  endif()
endforeach()
file(GLOB_RECURSE installed RELATIVE ${prefix} ${prefix}/*)
foreach(want "libpantry\\.so$" "libpantry\\.a$" "libpantry-malloc\\.so$"
             "cmake/pantry/pantryConfig\\.cmake$" "pkgconfig/pantry\\.pc$")
  set(found FALSE)
  foreach(f ${installed})
    if(f MATCHES "${want}")
      set(found TRUE)
    endif()
  endforeach()
  if(NOT found)
    message(FATAL_ERROR "consumer test: nothing installed matches ${want}: ${installed}")
  endif()
endforeach()

# (2) CMake: find_package(pantry)
run_step("configure the consumer" ${CMAKE_COMMAND} -S ${PANTRY_CONSUMER_DIR}
  -B ${PANTRY_WORK_DIR}/cmake-build -DCMAKE_PREFIX_PATH=${prefix}
  -DCMAKE_C_COMPILER=${CMAKE_C_COMPILER} -DCMAKE_BUILD_TYPE=Release)
run_step("build the consumer" ${CMAKE_COMMAND} --build ${PANTRY_WORK_DIR}/cmake-build)
foreach(exe consumer consumer_static consumer_malloc)
  run_step("run ${exe}" ${PANTRY_WORK_DIR}/cmake-build/${exe})
  message(STATUS "find_package: ${exe}: ${step_output}")
endforeach()

# (3) pkg-config
file(GLOB_RECURSE pc_files ${prefix}/*/pantry.pc)
list(GET pc_files 0 pc_file)
get_filename_component(pc_dir ${pc_file} DIRECTORY)
set(ENV{PKG_CONFIG_PATH} "${pc_dir}")
find_program(PKG_CONFIG pkg-config REQUIRED)
run_step("pkg-config --cflags --libs pantry" ${PKG_CONFIG} --cflags --libs pantry)
string(STRIP "${step_output}" flags)
separate_arguments(flags UNIX_COMMAND "${flags}")
run_step("pkg-config --variable=libdir pantry" ${PKG_CONFIG} --variable=libdir pantry)
string(STRIP "${step_output}" libdir)
run_step("compile with pkg-config's flags" ${CMAKE_C_COMPILER} -std=c11 -Wall -Wextra -Werror
  ${PANTRY_CONSUMER_DIR}/main.c ${flags} -Wl,-rpath,${libdir} -o ${PANTRY_WORK_DIR}/consumer-pc)
run_step("run consumer-pc" ${PANTRY_WORK_DIR}/consumer-pc)
message(STATUS "pkg-config: consumer-pc: ${step_output}")
run_step("pkg-config --static --libs pantry" ${PKG_CONFIG} --static --libs pantry)
message(STATUS "pkg-config --static: ${step_output}")
