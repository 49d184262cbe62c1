// Catch2 v2 main, shared by the C++ test executables.
#define CATCH_CONFIG_MAIN
#include "catch.h"
