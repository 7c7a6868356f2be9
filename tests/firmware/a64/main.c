/*
 * AArch64 test program: two CPUs each write a known array.  See ../README.md
 * for the exact expected events.  Every data access is through a volatile
 * pointer; the code makes no other data memory accesses (no stack use, no
 * literal pools: check with aarch64-linux-gnu-objdump -d).
 *
 * Handshake.  CPU 1 stores done = 1, sends SGI 0 to CPU 0 through the
 * GICv2 distributor (GICD_SGIR), and powers itself off with PSCI CPU_OFF.
 * CPU 0 waits for the SGI with WFI (IRQs stay masked in PSTATE, so nothing
 * is taken; WFI just wakes, and ISR_EL1.I shows the pending IRQ), then polls
 * PSCI AFFINITY_INFO until CPU 1 reports OFF, then loads done exactly once
 * and exits.  Why this way:
 *  - spinning on done would make the number of loads depend on host thread
 *    scheduling;
 *  - polling AFFINITY_INFO alone is racy in QEMU: CPU 1 reads OFF until its
 *    vCPU thread has run the CPU_ON work, which can be after CPU 0 finished;
 *  - waiting for OFF (an HVC, not a memory access) guarantees CPU 1's vCPU
 *    thread has completed every memory access, and every TCG plugin memory
 *    callback for them, before CPU 0 ends QEMU.  Without it, CPU 0 sometimes
 *    exited before the plugin had seen CPU 1's last store (GICD_SGIR).
 * HVC and WFI make no guest memory accesses, so every count is fixed.
 */
#include <stdint.h>

#define N 1000

__attribute__((section(".testram.arr0"), aligned(16), used))
uint64_t arr_0[N];                      /* 0x40100000 */
__attribute__((section(".testram.arr1"), aligned(16), used))
uint64_t arr_1[N];                      /* 0x40102000 */
__attribute__((section(".testram.done"), aligned(16), used))
uint64_t done;                          /* 0x40104000 */

extern void secondary_entry(void);

#define REG32(addr) (*(volatile uint32_t *)(uintptr_t)(addr))

/* QEMU -M virt GICv2 */
#define GICD_BASE   0x08000000u
#define GICC_BASE   0x08010000u
#define GICD_CTLR   (GICD_BASE + 0x000)
#define GICD_SGIR   (GICD_BASE + 0xF00)
#define GICC_CTLR   (GICC_BASE + 0x000)
#define GICC_PMR    (GICC_BASE + 0x004)
#define SGIR_CPU0_SGI0  0x00010000u     /* TargetListFilter 0, CPUTargetList {0}, SGI 0 */

#define PSCI_CPU_OFF        0x84000002u
#define PSCI_CPU_ON_64      0xC4000003u
#define PSCI_AFFINITY_INFO  0xC4000004u     /* returns 0 ON, 1 OFF, 2 ON_PENDING */
#define PSCI_STATE_OFF      1u

/* SMCCC call through HVC (the PSCI conduit of QEMU -M virt without EL2/EL3).
 * x0-x3 are in/out; x4-x17 are preserved by the callee from SMCCC v1.1 on
 * (QEMU's PSCI writes only x0).  Declaring x4-x17 clobbered would make gcc
 * keep a pointer in x30 and save it on the stack. */
static inline uint64_t psci_hvc(uint64_t fn, uint64_t a1, uint64_t a2, uint64_t a3)
{
    register uint64_t x0 __asm__("x0") = fn;
    register uint64_t x1 __asm__("x1") = a1;
    register uint64_t x2 __asm__("x2") = a2;
    register uint64_t x3 __asm__("x3") = a3;
    __asm__ volatile("hvc #0"
                     : "+r"(x0), "+r"(x1), "+r"(x2), "+r"(x3)
                     :
                     : "memory");
    return x0;
}

/* Semihosting SYS_EXIT (0x18) with the AArch64 parameter block
 * {ADP_Stopped_ApplicationExit, exit code}.  The blocks are read-only data;
 * QEMU reads them itself (not a guest load). */
static const uint64_t exit_ok[2]   = { 0x20026, 0 };
static const uint64_t exit_fail[2] = { 0x20026, 1 };

static void __attribute__((noreturn)) semihost_exit(const uint64_t *block)
{
    register uint64_t x0 __asm__("x0") = 0x18;
    register const uint64_t *x1 __asm__("x1") = block;
    __asm__ volatile("hlt #0xf000" : : "r"(x0), "r"(x1) : "memory");
    for (;;) { __asm__ volatile("wfi"); }
}

static inline uint64_t read_isr_el1(void)
{
    uint64_t v;
    __asm__ volatile("mrs %0, isr_el1" : "=r"(v));
    return v;
}

static inline void fill(volatile uint64_t *arr, uint64_t n)
{
    for (uint64_t i = 0; i < N; i++) {
        arr[i] = (n << 32) | i;
    }
}

void __attribute__((noreturn)) cpu0_main(void)
{
    volatile uint64_t *d = &done;

    REG32(GICD_CTLR) = 1;                          /* distributor on */
    REG32(GICC_PMR) = 0xFF;                        /* let every priority through */
    REG32(GICC_CTLR) = 1;                          /* CPU 0 interface on */
    *d = 0;
    __asm__ volatile("dsb sy" ::: "memory");
    if (psci_hvc(PSCI_CPU_ON_64, 1, (uint64_t)(uintptr_t)secondary_entry, 0) != 0) {
        semihost_exit(exit_fail);
    }
    fill(arr_0, 0);                                /* 1000 stores */
    while (!(read_isr_el1() & (1u << 7))) {        /* ISR_EL1.I: SGI from CPU 1 */
        __asm__ volatile("wfi");
    }
    while (psci_hvc(PSCI_AFFINITY_INFO, 1, 0, 0) != PSCI_STATE_OFF) {
        /* CPU 1 is between its SGI and the end of its CPU_OFF */
    }
    __asm__ volatile("dsb sy" ::: "memory");
    if (*d != 1) {                                 /* exactly 1 load, value 1 */
        semihost_exit(exit_fail);
    }
    semihost_exit(exit_ok);
}

/* CPU 1's address-space id: TTBR0_EL1 with ASID 5 in bits 63:48. The MMU
 * stays off, so it changes no translation; a trace must show it as the asid
 * of every access CPU 1 makes after this point, up to the next write. */
#define CPU1_TTBR0 0x0005000040200000ull
/* ... and ASID 6 for its last two accesses: a switch between two accesses. */
#define CPU1_TTBR0_LAST 0x0006000040200000ull

void __attribute__((noreturn)) cpu1_main(void)
{
    __asm__ volatile("msr ttbr0_el1, %0\n\tisb" :: "r"(CPU1_TTBR0) : "memory");
    fill(arr_1, 1);                                /* 1000 stores */
    __asm__ volatile("dsb sy" ::: "memory");
    __asm__ volatile("msr ttbr0_el1, %0\n\tisb" :: "r"(CPU1_TTBR0_LAST) : "memory");
    *(volatile uint64_t *)&done = 1;
    __asm__ volatile("dsb sy" ::: "memory");
    REG32(GICD_SGIR) = SGIR_CPU0_SGI0;             /* wake CPU 0 */
    psci_hvc(PSCI_CPU_OFF, 0, 0, 0);               /* does not return */
    for (;;) { __asm__ volatile("wfi"); }
}
