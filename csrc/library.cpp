// The single owner of the `qatkit` op namespace; op families add schemas with
// TORCH_LIBRARY_FRAGMENT in csrc/ops/<family>.cpp.
#include <torch/library.h>

TORCH_LIBRARY(qatkit, m) { (void)m; }
