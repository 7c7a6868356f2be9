/*
 * AArch64 entry points.  QEMU -M virt (no EL2, no EL3) starts CPU 0 at
 * _start in EL1 with the MMU off; CPU 1 stays powered off until CPU 0
 * starts it with PSCI CPU_ON (conduit: HVC), entering at secondary_entry.
 * Stack pointers are set with adrp/add (no literal-pool loads), so the
 * entry code makes no data memory accesses at all.
 */
    .section .text.start, "ax"
    .global _start
_start:
    msr     daifset, #0xf           /* IRQs stay masked (they are at reset too) */
    mrs     x0, mpidr_el1
    and     x0, x0, #0xff
    cbnz    x0, park                /* only CPU 0 may come this way */
    adrp    x1, __stack0_top
    add     x1, x1, :lo12:__stack0_top
    mov     sp, x1
    bl      cpu0_main               /* does not return */
    b       park

    .global secondary_entry
secondary_entry:
    msr     daifset, #0xf
    adrp    x1, __stack1_top
    add     x1, x1, :lo12:__stack1_top
    mov     sp, x1
    bl      cpu1_main               /* does not return */
park:
    wfi
    b       park
