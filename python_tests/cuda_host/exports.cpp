// The emulation's C entry point for ctypes: sdk_set_order(order) picks the schedule of every later
// launch (emulation.h).
#include "emulation.h"

extern "C" void sdk_set_order(int order) { sdk_host::order = order; }
