// Lets CPython import the shared library as pyops._C. Importing it runs the static TORCH_LIBRARY
// registrations; the module has no Python functions, so this stub is all it needs. The CMake (libtorch)
// build leaves this file out.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
