// The Python face of the compiled extension. Importing sdekernels._C loads this library, and its
// static registrations (bindings.cpp) define torch.ops.sdekernels_C; the module itself is empty.
// Only CPython's limited API is used here, so one build serves every CPython >= 3.10. The
// just-in-time build (sdekernels/_ext.py) loads the same library without importing it.
#include <Python.h>

static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "sdekernels._C",
                                 "The compiled kernels of sdekernels, registered as torch.ops.sdekernels_C.", 0,
                                 nullptr};

PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&module_def); }
