/*
 * Cortex-M3 firmware (QEMU lm3s6965evb) whose translated block stops in
 * the middle: an SDIV by zero with CCR.DIV_0_TRP set raises a UsageFault
 * (escalated to HardFault: UsageFault is not enabled) from inside the
 * block, so the instructions after it in that block never run there.  The
 * HardFault handler steps over the SDIV and returns; execution goes on in a
 * new block at the next instruction.  tests/tests/icount.rs checks that
 * the trace counts every instruction exactly once all the same.
 *
 * Written in assembly so that the block is what the comments say.  Every
 * constant is built with movw/movt (no literal pool: no data loads but the
 * documented ones).  Data accesses, in order (icount: pc):
 *   1. str  CCR (0xE000ED14) = 0x210   3: 0x1c  (MMIO: DIV_0_TRP | STKALIGN;
 *                                               QEMU ends the block after it)
 *   2. str  0x20000000 = 7             8: 0x2a
 *   3. ldr  the stacked PC (0x2e)     11: 0x4a  (handler)
 *   4. str  it + 4 (0x32)             13: 0x4e  (handler)
 *   5. str  0x20000004                16: 0x34
 *   6. str  0x20000008                18: 0x38
 * then semihosting SYS_EXIT (exit code 0) at icount 22: 23 instructions.
 * (The values of 5 and 6 are whatever r1 the exception frame gave back:
 * the test does not check them.)
 */
    .syntax unified
    .cpu cortex-m3
    .thumb

    .section .vectors, "a"
    .word   __stack_top
    .word   reset_handler
    .word   nmi
    .word   hardfault

    .text
    .thumb_func
    .global reset_handler
reset_handler:
    movw    r0, #0xed14
    movt    r0, #0xe000
    movw    r1, #0x0210
    str     r1, [r0]                /* 1: CCR: trap divisions by zero */
    movw    r4, #0x0000
    movt    r4, #0x2000             /* r4 = 0x20000000 */
    movs    r1, #7
    movs    r2, #0
    str     r1, [r4]                /* 2 */
    adds    r1, r1, #1
    sdiv    r3, r1, r2              /* traps here, in the middle of the block */
    adds    r1, r1, #1              /* first instruction after the handler */
    str     r1, [r4, #4]            /* 5 */
    adds    r1, r1, #1
    str     r1, [r4, #8]            /* 6 */
    movs    r0, #0x18               /* SYS_EXIT */
    movw    r1, #0x0026
    movt    r1, #0x0002             /* ADP_Stopped_ApplicationExit */
    bkpt    0xab
1:  b       1b

    .thumb_func
nmi:
    b       nmi

    /* The fault entered from thread mode on the main stack: the stacked PC
     * is at sp + 24.  SDIV is a 32-bit instruction: resume 4 bytes on. */
    .thumb_func
hardfault:
    ldr     r0, [sp, #24]           /* 3 */
    adds    r0, r0, #4
    str     r0, [sp, #24]           /* 4 */
    bx      lr
