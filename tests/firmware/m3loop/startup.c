/*
 * Minimal Cortex-M3 startup for QEMU lm3s6965evb (a copy of ../m3/startup.c).
 *
 * The vector table holds only the initial stack pointer and the reset
 * vector (the core fetches both itself at reset; those reads are not guest
 * instructions, so they never appear as guest memory accesses).  The reset
 * handler is a single branch: no .data copy, no .bss zeroing, no stack use.
 * The firmware has no initialised data, and its two globals (buf, sum) live
 * in the NOLOAD section .testram at a fixed address (see m3loop.ld).
 */
#include <stdint.h>

extern uint32_t __stack_top;            /* from m3loop.ld: 0x20010000 */
void reset_handler(void);
void fw_main(void) __attribute__((noreturn));

__attribute__((section(".vectors"), used))
const void *const vector_table[2] = {
    &__stack_top,
    (const void *)reset_handler,        /* Thumb bit set by the linker */
};

__attribute__((naked, noreturn)) void reset_handler(void)
{
    __asm__ volatile("b fw_main");
}
