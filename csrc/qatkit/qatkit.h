// The one include for LibTorch programs using qatkit.
#pragma once

#include "build_info.h"
#include "weight_cache.h"
#include "ops.h"
