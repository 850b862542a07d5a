/* Modern virtio-pci from user space: capabilities, reset and feature negotiation exactly as
 * Linux's virtio_pci_modern does them, DMA memory from a huge page, split virtqueues. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "vism-guest.h"

/* virtio_pci_cap cfg_type values */
#define VIRTIO_PCI_CAP_COMMON_CFG 1
#define VIRTIO_PCI_CAP_NOTIFY_CFG 2
#define VIRTIO_PCI_CAP_ISR_CFG 3
#define VIRTIO_PCI_CAP_DEVICE_CFG 4
#define VIRTIO_PCI_CAP_SHARED_MEMORY_CFG 8

#define PCI_STATUS 0x06
#define PCI_STATUS_CAP_LIST 0x10
#define PCI_CAPABILITY_LIST 0x34
#define PCI_CAP_ID_VNDR 0x09

/* struct virtio_pci_common_cfg */
#define COMMON_DFSELECT 0x00
#define COMMON_DF 0x04
#define COMMON_GFSELECT 0x08
#define COMMON_GF 0x0c
#define COMMON_NUMQ 0x12
#define COMMON_STATUS 0x14
#define COMMON_CFGGENERATION 0x15
#define COMMON_Q_SELECT 0x16
#define COMMON_Q_SIZE 0x18
#define COMMON_Q_ENABLE 0x1c
#define COMMON_Q_NOFF 0x1e
#define COMMON_Q_DESCLO 0x20
#define COMMON_Q_DESCHI 0x24
#define COMMON_Q_AVAILLO 0x28
#define COMMON_Q_AVAILHI 0x2c
#define COMMON_Q_USEDLO 0x30
#define COMMON_Q_USEDHI 0x34
#define COMMON_MIN_LEN 0x38

#define HUGE_PAGE (2u << 20)
#define SMALL_PAGE 4096u

static uint8_t r8(volatile uint8_t *b, unsigned off) { return *(volatile uint8_t *)(b + off); }
static uint16_t r16(volatile uint8_t *b, unsigned off) { return *(volatile uint16_t *)(b + off); }
static uint32_t r32(volatile uint8_t *b, unsigned off) { return *(volatile uint32_t *)(b + off); }
static void w8(volatile uint8_t *b, unsigned off, uint8_t v) { *(volatile uint8_t *)(b + off) = v; }
static void w16(volatile uint8_t *b, unsigned off, uint16_t v) { *(volatile uint16_t *)(b + off) = v; }
static void w32(volatile uint8_t *b, unsigned off, uint32_t v) { *(volatile uint32_t *)(b + off) = v; }
static void w64(volatile uint8_t *b, unsigned lo, unsigned hi, uint64_t v)
{
    w32(b, lo, (uint32_t)v);
    w32(b, hi, (uint32_t)(v >> 32));
}

double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static uint32_t le32_at(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

/* A capability's window inside its BAR, after checking it lies inside the BAR. */
static int cap_window(struct vdev *v, const char *what, uint8_t bar, uint64_t offset, uint64_t length,
                      uint64_t min_length, volatile uint8_t **out)
{
    int rc = pci_map_bar(&v->pci, bar);
    if (rc)
        return rc;
    uint64_t size = v->pci.bars[bar].size;
    if (offset > size || length > size - offset) {
        errorf("%s: %s capability [%#llx, +%#llx) lies outside BAR %u (%#llx bytes)", v->pci.addr, what,
               (unsigned long long)offset, (unsigned long long)length, bar, (unsigned long long)size);
        return EXIT_DEVICE;
    }
    if (length < min_length) {
        errorf("%s: %s capability is %llu bytes, at least %llu needed", v->pci.addr, what,
               (unsigned long long)length, (unsigned long long)min_length);
        return EXIT_DEVICE;
    }
    *out = v->pci.bars[bar].base + offset;
    return EXIT_OK;
}

/* Walks the capability list as Linux's virtio_pci_find_capability does: the first capability of
 * each type with a valid BAR wins. */
static int parse_caps(struct vdev *v)
{
    uint8_t cfg[256];
    memset(cfg, 0, sizeof cfg);
    if (pci_read_config(&v->pci, cfg, sizeof cfg) < 64) {
        errorf("%s: cannot read PCI config space", v->pci.addr);
        return EXIT_SYSTEM;
    }
    if (!(cfg[PCI_STATUS] & PCI_STATUS_CAP_LIST)) {
        errorf("%s: the device has no PCI capability list (not a modern virtio device)", v->pci.addr);
        return EXIT_DEVICE;
    }
    struct { int found; uint8_t bar; uint64_t off, len; } common = {0}, notify = {0}, isr = {0}, device = {0};
    unsigned pos = cfg[PCI_CAPABILITY_LIST] & 0xfc;
    for (int guard = 0; pos && guard < 48; guard++) {
        if (pos > sizeof cfg - 16)
            break;
        const uint8_t *c = cfg + pos;
        unsigned next = c[1] & 0xfc, len = c[2];
        if (c[0] == PCI_CAP_ID_VNDR && len >= 16 && pos + len <= sizeof cfg && c[4] <= 5) {
            uint8_t type = c[3], bar = c[4], id = c[5];
            uint64_t off = le32_at(c + 8), length = le32_at(c + 12);
            if (type == VIRTIO_PCI_CAP_SHARED_MEMORY_CFG) {
                if (len >= 24 && id < VISM_MAX_SHM && !v->shm[id].present) {
                    off |= (uint64_t)le32_at(c + 16) << 32;
                    length |= (uint64_t)le32_at(c + 20) << 32;
                    v->shm[id].present = 1;
                    v->shm[id].bar = bar;
                    v->shm[id].offset = off;
                    v->shm[id].length = length;
                }
            } else {
                __typeof__(&common) slot = type == VIRTIO_PCI_CAP_COMMON_CFG ? &common
                    : type == VIRTIO_PCI_CAP_NOTIFY_CFG ? &notify
                    : type == VIRTIO_PCI_CAP_ISR_CFG ? &isr
                    : type == VIRTIO_PCI_CAP_DEVICE_CFG ? &device : NULL;
                if (slot && !slot->found && (type != VIRTIO_PCI_CAP_NOTIFY_CFG || len >= 20)) {
                    slot->found = 1;
                    slot->bar = bar;
                    slot->off = off;
                    slot->len = length;
                    if (type == VIRTIO_PCI_CAP_NOTIFY_CFG)
                        v->notify_mult = le32_at(c + 16);
                }
            }
        }
        pos = next;
    }
    if (!common.found || !notify.found || !isr.found) {
        errorf("%s: missing virtio PCI capability: %s%s%s", v->pci.addr, common.found ? "" : "common cfg ",
               notify.found ? "" : "notify cfg ", isr.found ? "" : "ISR ");
        return EXIT_DEVICE;
    }
    int rc;
    if ((rc = cap_window(v, "common cfg", common.bar, common.off, common.len, COMMON_MIN_LEN, &v->common)))
        return rc;
    if ((rc = cap_window(v, "notify cfg", notify.bar, notify.off, notify.len, 2, &v->notify_base)))
        return rc;
    v->notify_len = notify.len;
    if ((rc = cap_window(v, "ISR", isr.bar, isr.off, isr.len, 1, &v->isr)))
        return rc;
    if (device.found) {
        if ((rc = cap_window(v, "device cfg", device.bar, device.off, device.len, 0, &v->devcfg)))
            return rc;
        v->devcfg_len = device.len;
    }
    for (int id = 1; id < VISM_MAX_SHM; id++) {
        struct vshm *s = &v->shm[id];
        if (!s->present)
            continue;
        char what[48];
        snprintf(what, sizeof what, "shared memory (shmid %d)", id);
        if ((rc = cap_window(v, what, s->bar, s->offset, s->length, 0, &s->base)))
            return rc;
    }
    return EXIT_OK;
}

int virtio_open(struct vdev *v, uint32_t virtio_id, const char *pci_addr)
{
    memset(v, 0, sizeof *v);
    v->pci.config_fd = -1;
    v->virtio_id = virtio_id;
    int rc = pci_find(0x1af4, (uint16_t)(0x1040 + virtio_id), pci_addr, &v->pci);
    if (rc)
        return rc;
    if ((rc = pci_take(&v->pci)))
        return rc;
    return parse_caps(v);
}

uint8_t virtio_status(struct vdev *v) { return r8(v->common, COMMON_STATUS); }

static void set_status(struct vdev *v, uint8_t bits) { w8(v->common, COMMON_STATUS, virtio_status(v) | bits); }

void virtio_reset(struct vdev *v)
{
    if (!v->common)
        return;
    w8(v->common, COMMON_STATUS, 0);
    double deadline = now_seconds() + 10;
    while (virtio_status(v) != 0 && now_seconds() < deadline)
        sleep_ms(1);
    v->started = 0;
}

int virtio_negotiate(struct vdev *v, uint64_t wanted)
{
    virtio_reset(v);
    if (virtio_status(v) != 0) {
        errorf("%s: the device does not reset (status %#x)", v->pci.addr, virtio_status(v));
        return EXIT_DEVICE;
    }
    set_status(v, VIRTIO_STATUS_ACKNOWLEDGE);
    set_status(v, VIRTIO_STATUS_DRIVER);
    w32(v->common, COMMON_DFSELECT, 0);
    uint64_t f = r32(v->common, COMMON_DF);
    w32(v->common, COMMON_DFSELECT, 1);
    f |= (uint64_t)r32(v->common, COMMON_DF) << 32;
    v->device_features = f;
    if (!(f & (1ULL << VIRTIO_F_VERSION_1))) {
        errorf("%s: the device does not offer VIRTIO_F_VERSION_1 (features %#llx)", v->pci.addr,
               (unsigned long long)f);
        set_status(v, VIRTIO_STATUS_FAILED);
        return EXIT_DEVICE;
    }
    v->features = f & wanted;
    w32(v->common, COMMON_GFSELECT, 0);
    w32(v->common, COMMON_GF, (uint32_t)v->features);
    w32(v->common, COMMON_GFSELECT, 1);
    w32(v->common, COMMON_GF, (uint32_t)(v->features >> 32));
    set_status(v, VIRTIO_STATUS_FEATURES_OK);
    if (!(virtio_status(v) & VIRTIO_STATUS_FEATURES_OK)) {
        errorf("%s: the device refused the features %#llx (FEATURES_OK not set)", v->pci.addr,
               (unsigned long long)v->features);
        set_status(v, VIRTIO_STATUS_FAILED);
        return EXIT_DEVICE;
    }
    v->num_queues = r16(v->common, COMMON_NUMQ);
    debugf("features: device %#llx, negotiated %#llx, %u queues", (unsigned long long)f,
           (unsigned long long)v->features, v->num_queues);
    return EXIT_OK;
}

int virtio_read_config(struct vdev *v, uint32_t offset, void *out, size_t len)
{
    if (!v->devcfg || offset > v->devcfg_len || len > v->devcfg_len - offset) {
        errorf("%s: device config [%u, +%zu) is not there (device cfg is %llu bytes)", v->pci.addr, offset, len,
               (unsigned long long)v->devcfg_len);
        return EXIT_DEVICE;
    }
    uint8_t *dst = out;
    for (int attempt = 0; attempt < 100; attempt++) {
        uint8_t gen = r8(v->common, COMMON_CFGGENERATION);
        for (size_t i = 0; i < len;) {
            if (len - i >= 4 && ((offset + i) & 3) == 0) {
                uint32_t w = r32(v->devcfg, (unsigned)(offset + i));
                memcpy(dst + i, &w, 4);
                i += 4;
            } else {
                dst[i] = r8(v->devcfg, (unsigned)(offset + i));
                i++;
            }
        }
        if (r8(v->common, COMMON_CFGGENERATION) == gen)
            return EXIT_OK;
    }
    errorf("%s: device config keeps changing while read", v->pci.addr);
    return EXIT_DEVICE;
}

int virtio_setup_queue(struct vdev *v, uint16_t index, uint16_t max_size)
{
    if (index >= VISM_MAX_QUEUES || index >= v->num_queues) {
        errorf("%s: the device has %u queues, queue %u is missing", v->pci.addr, v->num_queues, index);
        return EXIT_DEVICE;
    }
    w16(v->common, COMMON_Q_SELECT, index);
    uint16_t dev_size = r16(v->common, COMMON_Q_SIZE);
    if (dev_size == 0) {
        errorf("%s: queue %u is not available (size 0)", v->pci.addr, index);
        return EXIT_DEVICE;
    }
    if (r16(v->common, COMMON_Q_ENABLE)) {
        errorf("%s: queue %u is already enabled after reset", v->pci.addr, index);
        return EXIT_DEVICE;
    }
    uint16_t n = dev_size < max_size ? dev_size : max_size;
    while (n & (n - 1))
        n &= (uint16_t)(n - 1); /* largest power of two not above it */
    struct vq *q = &v->vqs[index];
    memset(q, 0, sizeof *q);
    q->index = index;
    q->size = n;
    q->desc = dma_alloc(&v->dma, 16u * n, 16, &q->desc_pa);
    q->avail = dma_alloc(&v->dma, 6u + 2u * n, 2, &q->avail_pa);
    q->used = dma_alloc(&v->dma, 6u + 8u * n, 4, &q->used_pa);
    if (!q->desc || !q->avail || !q->used) {
        errorf("DMA memory exhausted setting up queue %u", index);
        return EXIT_SYSTEM;
    }
    for (uint16_t i = 0; i < n; i++)
        q->desc[i].next = (uint16_t)(i + 1);
    q->num_free = n;
    q->avail[0] = VRING_AVAIL_F_NO_INTERRUPT; /* the tool polls */
    uint64_t noff = (uint64_t)r16(v->common, COMMON_Q_NOFF) * v->notify_mult;
    if (noff > v->notify_len || 2 > v->notify_len - noff) {
        errorf("%s: queue %u notify address %#llx lies outside the notify window (%llu bytes)", v->pci.addr, index,
               (unsigned long long)noff, (unsigned long long)v->notify_len);
        return EXIT_DEVICE;
    }
    q->notify = (volatile uint16_t *)(v->notify_base + noff);
    w16(v->common, COMMON_Q_SIZE, n);
    w64(v->common, COMMON_Q_DESCLO, COMMON_Q_DESCHI, q->desc_pa);
    w64(v->common, COMMON_Q_AVAILLO, COMMON_Q_AVAILHI, q->avail_pa);
    w64(v->common, COMMON_Q_USEDLO, COMMON_Q_USEDHI, q->used_pa);
    q->ready = 1;
    debugf("queue %u: %u entries, desc %#llx avail %#llx used %#llx", index, n, (unsigned long long)q->desc_pa,
           (unsigned long long)q->avail_pa, (unsigned long long)q->used_pa);
    return EXIT_OK;
}

int virtio_driver_ok(struct vdev *v)
{
    for (uint16_t i = 0; i < VISM_MAX_QUEUES; i++) {
        if (!v->vqs[i].ready)
            continue;
        w16(v->common, COMMON_Q_SELECT, i);
        w16(v->common, COMMON_Q_ENABLE, 1);
    }
    set_status(v, VIRTIO_STATUS_DRIVER_OK);
    uint8_t s = virtio_status(v);
    if (!(s & VIRTIO_STATUS_DRIVER_OK) || (s & VIRTIO_STATUS_NEEDS_RESET)) {
        errorf("%s: the device did not start (status %#x)", v->pci.addr, s);
        return EXIT_DEVICE;
    }
    v->started = 1;
    return EXIT_OK;
}

void virtio_close(struct vdev *v)
{
    virtio_reset(v); /* the device must stop using DMA memory before it is freed */
    dma_free(&v->dma);
    pci_close(&v->pci);
}

/* ---- DMA memory ---- */

static long read_long(const char *path)
{
    FILE *f = fopen(path, "r");
    long value = -1;
    if (f) {
        if (fscanf(f, "%ld", &value) != 1)
            value = -1;
        fclose(f);
    }
    return value;
}

/* Reserves `pages` more free 2 MiB huge pages (the guest starts with none). */
static void reserve_huge_pages(long pages)
{
    const char *dir = "/sys/kernel/mm/hugepages/hugepages-2048kB";
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/free_hugepages", dir);
    long free_pages = read_long(path);
    snprintf(path, sizeof path, "%s/nr_hugepages", dir);
    long total = read_long(path);
    if (free_pages < 0 || total < 0 || free_pages >= pages)
        return;
    FILE *f = fopen("/proc/sys/vm/nr_hugepages", "w");
    if (!f)
        return;
    fprintf(f, "%ld\n", total + pages - free_pages);
    fclose(f);
    debugf("reserved huge pages: %ld -> %ld", total, total + pages - free_pages);
}

static int pagemap_pfn(int fd, const void *va, uint64_t *pfn)
{
    uint64_t entry;
    off_t at = (off_t)((uintptr_t)va / SMALL_PAGE * 8);
    if (pread(fd, &entry, 8, at) != 8)
        return -1;
    if (!(entry & (1ULL << 63)))
        return -1;
    *pfn = entry & ((1ULL << 55) - 1);
    return *pfn ? 0 : -1;
}

int dma_init(struct dma *d, size_t size)
{
    memset(d, 0, sizeof *d);
    size = (size + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE | MAP_LOCKED;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (p == MAP_FAILED) {
        reserve_huge_pages((long)(size / HUGE_PAGE));
        p = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, -1, 0);
    }
    if (p == MAP_FAILED) {
        errorf("cannot get a 2 MiB huge page for the rings: %s (echo 1 > /proc/sys/vm/nr_hugepages; "
               "the kernel needs CONFIG_HUGETLBFS)", strerror(errno));
        return EXIT_SYSTEM;
    }
    memset(p, 0, size);
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        errorf("cannot open /proc/self/pagemap: %s (is /proc mounted?)", strerror(errno));
        munmap(p, size);
        return EXIT_SYSTEM;
    }
    /* A huge page is physically contiguous: translate its first byte and check every 4 KiB
     * page after it follows on (the device addresses the memory physically). */
    uint64_t first = 0, pfn;
    int ok = pagemap_pfn(fd, p, &first) == 0;
    for (size_t off = SMALL_PAGE; ok && off < size; off += SMALL_PAGE)
        ok = pagemap_pfn(fd, (uint8_t *)p + off, &pfn) == 0 && pfn == first + off / SMALL_PAGE;
    close(fd);
    if (!ok) {
        errorf("cannot translate the ring memory to a physical address through /proc/self/pagemap "
               "(needs root: CAP_SYS_ADMIN)");
        munmap(p, size);
        return EXIT_SYSTEM;
    }
    d->va = p;
    d->pa = first * SMALL_PAGE;
    d->size = size;
    debugf("DMA memory: %zu bytes at guest-physical %#llx", size, (unsigned long long)d->pa);
    return EXIT_OK;
}

void *dma_alloc(struct dma *d, size_t len, size_t align, uint64_t *pa)
{
    size_t start = (d->used + align - 1) / align * align;
    if (start > d->size || len > d->size - start)
        return NULL;
    d->used = start + len;
    *pa = d->pa + start;
    return d->va + start;
}

void dma_free(struct dma *d)
{
    if (d->va)
        munmap(d->va, d->size);
    memset(d, 0, sizeof *d);
}

/* ---- split virtqueue ---- */

void vq_kick(struct vq *q)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!(q->used[0] & VRING_USED_F_NO_NOTIFY))
        *q->notify = q->index;
}

int vq_add(struct vq *q, const struct vq_buf *bufs, int n, int kick)
{
    if (n <= 0 || n > q->num_free)
        return -1;
    uint16_t head = q->free_head, i = head;
    for (int k = 0; k < n; k++) {
        struct vring_desc *d = &q->desc[i];
        d->addr = bufs[k].pa;
        d->len = bufs[k].len;
        d->flags = (uint16_t)((bufs[k].device_writes ? VRING_DESC_F_WRITE : 0) | (k + 1 < n ? VRING_DESC_F_NEXT : 0));
        i = d->next;
    }
    q->free_head = i;
    q->num_free = (uint16_t)(q->num_free - n);
    q->avail[2 + q->avail_idx % q->size] = head;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    q->avail_idx++;
    q->avail[1] = q->avail_idx;
    if (kick)
        vq_kick(q);
    return head;
}

int vq_get_used(struct vq *q, struct vring_used_elem *elem)
{
    uint16_t idx = q->used[1];
    if (idx == q->last_used)
        return 0;
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    volatile struct vring_used_elem *ring = (volatile struct vring_used_elem *)((volatile uint8_t *)q->used + 4);
    elem->id = ring[q->last_used % q->size].id;
    elem->len = ring[q->last_used % q->size].len;
    q->last_used++;
    return 1;
}

void vq_free_chain(struct vq *q, uint16_t head)
{
    uint16_t i = head, count = 1;
    while ((q->desc[i].flags & VRING_DESC_F_NEXT) && count < q->size) {
        i = q->desc[i].next;
        count++;
    }
    q->desc[i].next = q->free_head;
    q->free_head = head;
    q->num_free = (uint16_t)(q->num_free + count);
}
