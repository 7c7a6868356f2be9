/*
 * Cortex-M3 loop firmware for the trace-collector reliability tests and
 * benchmarks: a CPU-bound loop with a fixed number of memory accesses per
 * iteration.  See ../README.md ("Cortex-M3 loop firmware") for the exact
 * accesses.  Every access goes through a volatile pointer so that the
 * compiler emits exactly one load/store of the stated width per access.
 *
 * ITERATIONS (a -D define, set by the Makefile from the file name
 * m3loop-<N>.elf): 0 = loop forever (the tests kill QEMU); N > 0 = run N
 * iterations, print "done\n" on the UART and exit QEMU with status 0
 * through semihosting.
 */
#include <stdint.h>

#ifndef ITERATIONS
#error "build with -DITERATIONS=<n> (0 = forever)"
#endif

#define REG32(addr) (*(volatile uint32_t *)(uintptr_t)(addr))

#define UART0_DR        0x4000C000u
#define SYST_CSR        0xE000E010u
#define SYST_RVR        0xE000E014u
#define SYST_CVR        0xE000E018u

__attribute__((section(".testram.buf"), aligned(16), used))
uint32_t buf[4];                      /* at 0x20000000 */
__attribute__((section(".testram.sum"), aligned(4), used))
uint32_t sum;                         /* at 0x20000010 */

#if ITERATIONS != 0
#define SYS_EXIT                       0x18
#define ADP_Stopped_ApplicationExit    0x20026

static void __attribute__((noreturn)) semihost_exit_ok(void)
{
    register uint32_t r0 __asm__("r0") = SYS_EXIT;
    register uint32_t r1 __asm__("r1") = ADP_Stopped_ApplicationExit;
    __asm__ volatile("bkpt 0xab" : : "r"(r0), "r"(r1) : "memory");
    for (;;) { }
}
#endif

void __attribute__((noreturn)) fw_main(void)
{
    volatile uint32_t *b = buf;
    uint32_t s = 0;

    /* SysTick counting down from 0xFFFFFF on the core clock, no interrupt:
     * 2 word stores. */
    REG32(SYST_RVR) = 0x00FFFFFFu;
    REG32(SYST_CSR) = 0x5u;           /* ENABLE | CLKSOURCE, no TICKINT */

    /* Per iteration: 2 word stores and 2 word loads of RAM, 1 word load of
     * SysTick CVR.  The bounded loop counts down (n = N, ..., 1) so that gcc
     * needs no register for the limit (with one more live register it saves
     * lr on the stack). */
#if ITERATIONS == 0
    for (uint32_t n = 0;; n++) {
#else
    for (uint32_t n = (uint32_t)(ITERATIONS); n != 0; n--) {
#endif
        b[0] = n;
        b[1] = s;
        s += b[0];
        s ^= b[1];
        s += REG32(SYST_CVR);
    }

#if ITERATIONS != 0
    /* 1 word store of the checksum, 5 word stores of "done\n". */
    *(volatile uint32_t *)&sum = s;
    REG32(UART0_DR) = 'd';
    REG32(UART0_DR) = 'o';
    REG32(UART0_DR) = 'n';
    REG32(UART0_DR) = 'e';
    REG32(UART0_DR) = '\n';
    semihost_exit_ok();
#endif
}
