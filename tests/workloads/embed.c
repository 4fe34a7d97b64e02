/* A program embedding CPython through libpython (the --enable-shared case): its markers live
 * in libpython3.X.so.1.0, mapped only after the program starts. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

int main(void)
{
	Py_Initialize();
	int rc = PyRun_SimpleString(
		"import gc, os\n"
		"try:\n"
		"    __import__(f'pyusdt_embedded_{os.getpid()}')\n"
		"except ImportError:\n"
		"    pass\n"
		"import json\n"
		"gc.collect()\n");
	if (Py_FinalizeEx() < 0)
		return 120;
	return rc == 0 ? 0 : 1;
}
