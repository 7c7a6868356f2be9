/* A user-space process of the x86-64 test guest (scripts/x86-guest.sh puts
 * it in the initramfs as /bin/fill; /init runs it once): it writes the 16
 * bytes 0xa0..0xaf into a buffer one byte at a time, reads them back one at
 * a time, and prints the buffer's address, so that a test can ask bufmon
 * for exactly those 32 accesses in this process's address space (its CR3).
 * Built static and not position-independent: the address is the same in
 * every boot. */
#include <stdio.h>
#include <unistd.h>

static volatile unsigned char buf[16];

int main(void)
{
    unsigned sum = 0;
    for (int i = 0; i < 16; i++)
        buf[i] = 0xa0 + i;
    for (int i = 0; i < 16; i++)
        sum += buf[i];
    printf("trace-collector fill: buf %p pid %d sum %u\n", (void *)buf, getpid(), sum);
    return 0;
}
