/* A position-independent executable with SystemTap SDT markers of provider "python", guarded by
 * semaphores: checks discovery on PIE files, which CPython's executable is not on Debian.
 * Not a CPython, so its version is unknown. */
#define _SDT_HAS_SEMAPHORES 1
#include <sys/sdt.h>

unsigned short python_gc__start_semaphore __attribute__((section(".probes")));
unsigned short python_audit_semaphore __attribute__((section(".probes")));

int main(int argc, char **argv)
{
	if (python_gc__start_semaphore)
		STAP_PROBE1(python, gc__start, argc);
	if (python_audit_semaphore)
		STAP_PROBE2(python, audit, argv[0], argc);
	return 0;
}
