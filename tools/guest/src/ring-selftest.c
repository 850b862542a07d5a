/* vism-ring-selftest: checks vism-guest's virtio-pci and split-ring code against a device QEMU
 * implements itself (virtio-rng, non-transitional: 1af4:1044). It posts device-writable buffers
 * (single descriptors and two-descriptor chains) for more rounds than the ring has entries, so
 * ring indices wrap and descriptors are reused, and checks every buffer comes back filled.
 * Used by the guest-image tests; not needed to use vism.
 * Exit codes as vism-guest's; prints "ring-selftest ok ..." on success. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vism-guest.h"

#define ROUNDS 200
#define CHUNK 32

int main(int argc, char **argv)
{
    uint32_t id = argc > 1 ? (uint32_t)strtoul(argv[1], NULL, 0) : 4;
    static struct vdev v;
    int rc = virtio_open(&v, id, NULL);
    if (rc == EXIT_NODEV)
        errorf("ring-selftest: no PCI function 1af4:%04x (start QEMU with -device virtio-rng-pci-non-transitional)",
               0x1040 + id);
    if (rc || (rc = dma_init(&v.dma, 2u << 20)) || (rc = virtio_negotiate(&v, 1ULL << VIRTIO_F_VERSION_1))
        || (rc = virtio_setup_queue(&v, 0, 16)) || (rc = virtio_driver_ok(&v)))
        return rc;
    struct vq *q = &v.vqs[0];
    uint64_t pa;
    uint8_t *buf = dma_alloc(&v.dma, 2 * CHUNK, 64, &pa);
    unsigned long total = 0;
    for (int round = 0; round < ROUNDS; round++) {
        memset(buf, 0, 2 * CHUNK);
        struct vq_buf bufs[2] = {{pa, CHUNK, 1}, {pa + CHUNK, CHUNK, 1}};
        int n = round % 2 ? 2 : 1;
        int head = vq_add(q, bufs, n, 1);
        if (head < 0) {
            errorf("ring-selftest: round %d: no free descriptors (%u free)", round, q->num_free);
            return EXIT_DEVICE;
        }
        struct vring_used_elem e;
        double deadline = now_seconds() + 30;
        while (!vq_get_used(q, &e)) {
            if (now_seconds() > deadline) {
                errorf("ring-selftest: round %d: the device did not use the buffer", round);
                return EXIT_TIMEOUT;
            }
            sleep_ms(1);
        }
        if (e.id != (uint32_t)head || e.len == 0 || e.len > (uint32_t)(n * CHUNK)) {
            errorf("ring-selftest: round %d: used id %u len %u, expected id %d len 1..%d", round, e.id, e.len, head,
                   n * CHUNK);
            return EXIT_DEVICE;
        }
        int nonzero = 0;
        for (uint32_t i = 0; i < e.len; i++)
            nonzero |= buf[i];
        if (!nonzero) {
            errorf("ring-selftest: round %d: the device reported %u bytes but wrote none", round, e.len);
            return EXIT_DEVICE;
        }
        vq_free_chain(q, (uint16_t)head);
        total += e.len;
    }
    if (q->num_free != q->size) {
        errorf("ring-selftest: %u of %u descriptors free after all rounds", q->num_free, q->size);
        return EXIT_DEVICE;
    }
    printf("ring-selftest ok rounds=%d queue-size=%u bytes=%lu\n", ROUNDS, q->size, total);
    virtio_close(&v);
    return EXIT_OK;
}
