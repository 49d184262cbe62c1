// Symbol visibility for libqatkit's public C++ API.
#pragma once

#if defined(_WIN32)
#if defined(QATKIT_BUILDING_LIBRARY)
#define QATKIT_API __declspec(dllexport)
#else
#define QATKIT_API __declspec(dllimport)
#endif
#else
#define QATKIT_API __attribute__((visibility("default")))
#endif
