/*
 * Cortex-M3 test firmware: a fixed, documented sequence of memory accesses
 * for the trace-collector integration tests.  See ../README.md for the exact
 * expected events.  Every access goes through a volatile pointer so that the
 * compiler emits exactly one load/store of the stated width per access.
 */
#include <stdint.h>

#define REG32(addr) (*(volatile uint32_t *)(uintptr_t)(addr))

#define UART0_DR        0x4000C000u
#define SYST_CSR        0xE000E010u
#define SYST_RVR        0xE000E014u
#define SYST_CVR        0xE000E018u
#define FLASH_CTRL      0x400FD000u   /* QEMU "flash-control" unimplemented device */
#define PWM_BASE        0x40028000u   /* QEMU "PWM" unimplemented device */

__attribute__((section(".testram.buf"), aligned(16), used))
uint8_t buf[16];                      /* at 0x20000000 */
__attribute__((section(".testram.sum"), aligned(4), used))
uint32_t sum;                         /* at 0x20000010 */

#define SYS_EXIT                       0x18
#define ADP_Stopped_ApplicationExit    0x20026

static void __attribute__((noreturn)) semihost_exit_ok(void)
{
    register uint32_t r0 __asm__("r0") = SYS_EXIT;
    register uint32_t r1 __asm__("r1") = ADP_Stopped_ApplicationExit;
    __asm__ volatile("bkpt 0xab" : : "r"(r0), "r"(r1) : "memory");
    for (;;) { }
}

void __attribute__((noreturn)) fw_main(void)
{
    /* 1. UART0: 6 word stores of "Hello\n" to the data register. */
    REG32(UART0_DR) = 'H';
    REG32(UART0_DR) = 'e';
    REG32(UART0_DR) = 'l';
    REG32(UART0_DR) = 'l';
    REG32(UART0_DR) = 'o';
    REG32(UART0_DR) = '\n';

    /* 2. SysTick: 3 word stores, 10 word loads of CVR, 1 word store. */
    REG32(SYST_RVR) = 0x00001000u;
    REG32(SYST_CVR) = 0u;
    REG32(SYST_CSR) = 0x5u;           /* ENABLE | CLKSOURCE, no TICKINT */
#pragma GCC unroll 10
    for (int i = 0; i < 10; i++) {
        (void)REG32(SYST_CVR);
    }
    REG32(SYST_CSR) = 0u;

    /* 3. RAM buffer: 16 byte stores, 4 word stores, 4 word loads, 1 word store. */
    volatile uint8_t *b8 = buf;
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) {
        b8[i] = (uint8_t)(0xA0 + i);
    }
    volatile uint32_t *b32 = (volatile uint32_t *)buf;
    b32[0] = 0x03020100u;
    b32[1] = 0x07060504u;
    b32[2] = 0x0b0a0908u;
    b32[3] = 0x0f0e0d0cu;
    uint32_t s = 0;
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        s += b32[i];
    }
    *(volatile uint32_t *)&sum = s;   /* 0x24201c18 */

    /* 4. Unimplemented-device stubs: 1 word load, 1 word store. */
    (void)REG32(FLASH_CTRL);
    REG32(PWM_BASE) = 0x1u;

    /* 5. Exit QEMU with status 0. */
    semihost_exit_ok();
}
