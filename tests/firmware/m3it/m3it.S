/*
 * Cortex-M3 firmware (QEMU lm3s6965evb) made of Thumb-2 IT blocks: every
 * length (1 to 4 instructions), every then/else pattern (15), every
 * condition (eq to le; al with then-only patterns), 214 blocks in all, in
 * one function run four times under different flags so that each member
 * both runs and is skipped.  tests/tests/execlog.rs checks that the `code`
 * table and `trace-query execlog` give QEMU's own text for each, as QEMU's
 * execlog plugin prints it in the same run.
 *
 * Members, by their place in the block: 1 `adds r5, #1` (16-bit: `add`
 * with no flags inside the block, which is where capstone's IT state
 * shows), 2 `add.w r6, r6, #2`, 3 `ldr r1, [r4]`, 4 `str r5, [r4, #4]`
 * (r4 = 0x20000000: a data access when the condition holds).  Every
 * constant is built with movw/movt (no literal pool).
 */
    .syntax unified
    .cpu cortex-m3
    .thumb

    .section .vectors, "a"
    .word   __stack_top
    .word   reset_handler

    .text
    .thumb_func
    .global reset_handler
reset_handler:
    movw    r4, #0x0000
    movt    r4, #0x2000
    movs    r5, #0
    movs    r6, #0
    /* Four passes; the flags of `cmp r0, #1` hold through each. */
    movs    r0, #0
    cmp     r0, #1                  /* N, !Z, !C, !V */
    bl      blocks
    movs    r0, #1
    cmp     r0, #1                  /* !N, Z, C, !V */
    bl      blocks
    movs    r0, #2
    cmp     r0, #1                  /* !N, !Z, C, !V */
    bl      blocks
    movw    r0, #0x0000
    movt    r0, #0x8000
    cmp     r0, #1                  /* !N, !Z, C, V */
    bl      blocks
    movs    r0, #0x18               /* semihosting SYS_EXIT */
    movw    r1, #0x0026
    movt    r1, #0x0002             /* ADP_Stopped_ApplicationExit */
    bkpt    0xab
1:  b       1b

/* Member `pos` (1 to 4) of a block, under condition `cond`. */
.macro member cond
    .if pos == 1
    add\cond r5, #1
    .elseif pos == 2
    add\cond\().w r6, r6, #2
    .elseif pos == 3
    ldr\cond r1, [r4]
    .else
    str\cond r5, [r4, #4]
    .endif
.endm

/* `it<p> c` and its members: `c` for the first and each t of `p`, the
 * inverse `i` for each e. */
.macro itblock p, c, i
    it\p    \c
    .set    pos, 0
    .irpc   x, t\p
    .set    pos, pos + 1
    .ifc    \x, t
    member  \c
    .else
    member  \i
    .endif
    .endr
.endm

/* Every pattern under `c` (inverse `i`). */
.macro patterns c, i
    .irp    p, ,t,e,tt,te,et,ee,ttt,tte,tet,tee,ett,ete,eet,eee
    itblock \p, \c, \i
    .endr
.endm

    .thumb_func
blocks:
    patterns eq, ne
    patterns ne, eq
    patterns cs, cc
    patterns cc, cs
    patterns mi, pl
    patterns pl, mi
    patterns vs, vc
    patterns vc, vs
    patterns hi, ls
    patterns ls, hi
    patterns ge, lt
    patterns lt, ge
    patterns gt, le
    patterns le, gt
    /* Under al (then only), which gas refuses to assemble: the same
     * blocks, encoded by hand. */
    .inst.n 0xbfe8                  /* it al */
    .inst.n 0x3501                  /* add r5, #1 */
    .inst.n 0xbfe4                  /* itt al */
    .inst.n 0x3501
    .inst.w 0xf1060602              /* add.w r6, r6, #2 */
    .inst.n 0xbfe2                  /* ittt al */
    .inst.n 0x3501
    .inst.w 0xf1060602
    .inst.n 0x6821                  /* ldr r1, [r4] */
    .inst.n 0xbfe1                  /* itttt al */
    .inst.n 0x3501
    .inst.w 0xf1060602
    .inst.n 0x6821
    .inst.n 0x6065                  /* str r5, [r4, #4] */
    bx      lr
