/* Stand-in for bcryptprimitives.dll, which Wine 8 does not ship.
 *
 * Rust's std (1.78+) imports ProcessPrng from bcryptprimitives.dll for random seeds
 * (HashMap keys etc.). Without the DLL, Wine refuses to start any Rust .exe: the process
 * exits with code 53 (STATUS_DLL_NOT_FOUND). We export ProcessPrng and fill the buffer with
 * advapi32's SystemFunction036 (RtlGenRandom), which Wine does implement.
 *
 * scripts/windows-tests.sh builds it with
 *   x86_64-w64-mingw32-gcc -O2 -shared -s -o bcryptprimitives.dll bcryptprimitives.c -ladvapi32
 * and copies it into $WINEPREFIX/drive_c/windows/system32/. Never ship it to real Windows. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    /* SystemFunction036 takes a 32-bit length; feed it in chunks. */
    while (len) {
        ULONG n = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
