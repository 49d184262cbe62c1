// Catch2 v2 for qatkit's C++ tests. c10 defines CHECK, so Catch2's macros are used with their
// CATCH_ prefix everywhere. Defined here, not on the command line: the test programs share one
// precompiled <torch/torch.h>, which GCC only uses when every command-line macro matches.
#pragma once
#define CATCH_CONFIG_PREFIX_ALL
#include <catch2/catch.hpp>
