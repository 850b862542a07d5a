/* vism-guest: drives a virtio-ism device from Linux user space (no kernel driver needed).
 * Shared declarations of the four parts: pci.c (sysfs), virtio.c (modern virtio-pci, split
 * rings), ism.c (the ISM control and event queues), main.c (command line and scripts). */
#ifndef VISM_GUEST_H
#define VISM_GUEST_H

#include <limits.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Exit codes (documented in README.md; scripts and tests rely on them). */
enum {
    EXIT_OK = 0,
    EXIT_USAGE = 1,     /* bad command line or script */
    EXIT_NODEV = 2,     /* no virtio-ism PCI device found */
    EXIT_DEVICE = 3,    /* device unusable: missing capability, BAR, feature or queue */
    EXIT_ERR_ACK = 4,   /* the device answered a request with VIRTIO_ISM_ERR */
    EXIT_NO_EVENT = 5,  /* wait: no event before the timeout */
    EXIT_TIMEOUT = 6,   /* the device did not complete a request in time, or needs a reset */
    EXIT_SYSTEM = 7,    /* a guest resource failed: huge pages, pagemap, sysfs */
    EXIT_STOPPED = 8,   /* interrupted by SIGINT/SIGTERM */
};

/* Set by the SIGINT/SIGTERM handler; every wait loop checks it. */
extern volatile sig_atomic_t g_stop;

/* Prints "vism-guest: <message>" to stderr (with the script position when one runs). */
void errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints "vism-guest: <message>" to stderr when --verbose was given. */
void debugf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_set_verbose(int on);
/* Prefixes error messages with "script:line: " (NULL clears it). */
void log_set_where(const char *script, int line);

/* ---- pci.c: a PCI function through sysfs ---- */

struct pci_bar {
    volatile uint8_t *base; /* NULL until mapped */
    uint64_t size;
};

struct pci_dev {
    char addr[24];            /* 0000:00:03.0 */
    char path[64];            /* /sys/bus/pci/devices/0000:00:03.0 */
    uint16_t vendor, device;
    int config_fd;
    struct pci_bar bars[6];
};

/* Finds the first function with vendor:device (or exactly `addr` when given).
 * Returns EXIT_OK or EXIT_NODEV. */
int pci_find(uint16_t vendor, uint16_t device, const char *addr, struct pci_dev *dev);
/* Takes the function from its kernel driver (sysfs unbind), enables it and sets memory decoding
 * and bus mastering with INTx disabled (the tool polls; nothing may raise an interrupt nobody
 * handles). */
int pci_take(struct pci_dev *dev);
/* Reads config space (up to 4096 bytes); returns bytes read or -1. */
ssize_t pci_read_config(struct pci_dev *dev, uint8_t *buf, size_t len);
/* Maps BAR `bar` through sysfs resourceN (once); returns EXIT_OK or EXIT_DEVICE. */
int pci_map_bar(struct pci_dev *dev, int bar);
void pci_close(struct pci_dev *dev);

/* ---- virtio.c: modern virtio-pci transport, DMA memory, split virtqueues ---- */

#define VIRTIO_F_VERSION_1 32
#define VIRTIO_F_ACCESS_PLATFORM 33
#define VIRTIO_F_ORDER_PLATFORM 36

#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED 128

/* Memory whose guest-physical address is known: one huge page, locked, translated through
 * /proc/self/pagemap. The device reads rings and buffers here. */
struct dma {
    uint8_t *va;
    uint64_t pa;
    size_t size, used;
};

struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY 1

struct vring_used_elem {
    uint32_t id;
    uint32_t len;
};

struct vq {
    int ready;
    uint16_t index, size;
    struct vring_desc *desc;
    volatile uint16_t *avail; /* flags, idx, ring[size] */
    volatile uint16_t *used;  /* flags, idx, then elems */
    uint64_t desc_pa, avail_pa, used_pa;
    uint16_t avail_idx, last_used, free_head, num_free;
    volatile uint16_t *notify;
};

/* A buffer of a descriptor chain. */
struct vq_buf {
    uint64_t pa;
    uint32_t len;
    int device_writes;
};

/* One shared-memory capability (VIRTIO_PCI_CAP_SHARED_MEMORY_CFG). */
struct vshm {
    int present;
    uint8_t bar;
    uint64_t offset, length;
    volatile uint8_t *base;
};

#define VISM_MAX_QUEUES 2
#define VISM_MAX_SHM 3

struct vdev {
    struct pci_dev pci;
    uint32_t virtio_id;
    volatile uint8_t *common, *isr, *devcfg, *notify_base;
    uint64_t devcfg_len, notify_len;
    uint32_t notify_mult;
    struct vshm shm[VISM_MAX_SHM]; /* index = shmid */
    uint64_t device_features, features;
    uint16_t num_queues;
    struct dma dma;
    struct vq vqs[VISM_MAX_QUEUES];
    int started;
};

/* Finds the device, takes it from virtio-pci, parses and maps its capabilities. */
int virtio_open(struct vdev *v, uint32_t virtio_id, const char *pci_addr);
/* Resets the device and negotiates `wanted` (a mask) against what it offers; VERSION_1 is
 * required. Leaves the status at ACKNOWLEDGE|DRIVER|FEATURES_OK. */
int virtio_negotiate(struct vdev *v, uint64_t wanted);
/* Sets up queue `index` in DMA memory with at most `max_size` entries (not yet enabled). */
int virtio_setup_queue(struct vdev *v, uint16_t index, uint16_t max_size);
/* Enables every set-up queue and sets DRIVER_OK. */
int virtio_driver_ok(struct vdev *v);
/* Writes status 0 and waits until the device reads back 0. */
void virtio_reset(struct vdev *v);
uint8_t virtio_status(struct vdev *v);
/* Reads `len` bytes of device config at `offset` consistently (config generation). */
int virtio_read_config(struct vdev *v, uint32_t offset, void *out, size_t len);
void virtio_close(struct vdev *v);

int dma_init(struct dma *d, size_t size);
void *dma_alloc(struct dma *d, size_t len, size_t align, uint64_t *pa);
void dma_free(struct dma *d);

/* Adds a chain, publishes it and kicks unless the device asked for no notifications.
 * Returns the head descriptor index, or -1 when the ring has no room. */
int vq_add(struct vq *q, const struct vq_buf *bufs, int n, int kick);
void vq_kick(struct vq *q);
/* Takes the next used element; returns 1 when one was there, 0 otherwise. */
int vq_get_used(struct vq *q, struct vring_used_elem *elem);
/* Returns the descriptors of a chain to the free list. */
void vq_free_chain(struct vq *q, uint16_t head);

/* Monotonic seconds. */
double now_seconds(void);
/* Sleeps about `ms` milliseconds (interrupted by signals). */
void sleep_ms(int ms);

/* ---- ism.c: the ISM device ---- */

#define VIRTIO_ISM_F_EVENT_VQ 0
#define VIRTIO_ISM_F_EVENT_IRQ 1
#define VIRTIO_ISM_SHM_ID_REGIONS 1
#define VIRTIO_ISM_SHM_ID_NOTIFY 2

#define VIRTIO_ISM_CTRL_ALLOC 0
#define VIRTIO_ISM_CTRL_ATTACH 1
#define VIRTIO_ISM_CTRL_DETACH 2
#define VIRTIO_ISM_CTRL_GRANT 3
#define VIRTIO_ISM_CTRL_EVENT_VECTOR 4

#define VIRTIO_ISM_OK 0
#define VIRTIO_ISM_ERR 1

#define VIRTIO_ISM_PERM_READ (1u << 0)
#define VIRTIO_ISM_PERM_WRITE (1u << 1)
#define VIRTIO_ISM_PERM_ATTACH (1u << 2)
#define VIRTIO_ISM_PERM_MANAGE (1u << 3)
#define VIRTIO_ISM_PERM_DENY_OTHER (1u << 4)

#define ISM_EVENT_BUFFERS 16
#define ISM_EVENT_BUFFER_SIZE 4096
#define ISM_MAX_KNOWN 256

struct ism_region {
    uint64_t offset, size, token;
};

struct ism {
    struct vdev v;
    uint64_t gid, devid, region_size, notify_size;
    volatile uint8_t *regions, *notify;
    uint64_t regions_len, notify_len;
    int has_eventq;
    double timeout;                    /* seconds a control request may take */
    uint8_t *ctrl_out, *ctrl_in;
    uint64_t ctrl_out_pa, ctrl_in_pa;
    uint8_t *ev_buf[ISM_EVENT_BUFFERS];
    uint64_t ev_pa[ISM_EVENT_BUFFERS];
    int ev_head_to_buf[1024];           /* descriptor head -> event buffer + 1 (0: not in flight) */
    struct ism_region known[ISM_MAX_KNOWN]; /* regions this process allocated or attached */
    int nknown;
};

struct ism_event {
    uint64_t num;       /* as the device wrote it */
    uint64_t count;     /* offsets actually present in the buffer */
    uint64_t offsets[(ISM_EVENT_BUFFER_SIZE - 8) / 8];
};

/* Opens and starts the device with virtio id `id` (0: try 44, then 45). */
int ism_open(struct ism *m, uint32_t id, const char *pci_addr, double timeout);
void ism_close(struct ism *m);
int ism_alloc(struct ism *m, uint64_t size, uint64_t *token, uint64_t *offset);
int ism_attach(struct ism *m, uint64_t token, uint64_t *offset);
int ism_detach(struct ism *m, uint64_t offset);
int ism_grant(struct ism *m, uint64_t offset, uint64_t peer, uint64_t perms);
int ism_write(struct ism *m, uint64_t offset, const void *data, size_t len);
int ism_read(struct ism *m, uint64_t offset, void *out, size_t len);
/* Signals an update of the region: stores a new value (the old one plus 1) into its notify slot;
 * *written is the value stored. */
int ism_notify(struct ism *m, uint64_t offset, uint64_t *slot, unsigned *written);
int ism_wait(struct ism *m, double timeout, struct ism_event *ev);

/* ---- sha256.c ---- */

struct sha256 {
    uint32_t h[8];
    uint64_t bytes;
    uint8_t buf[64];
    size_t used;
};
void sha256_init(struct sha256 *s);
void sha256_update(struct sha256 *s, const void *data, size_t len);
/* Finishes the digest and writes it as 64 hex digits and a NUL. */
void sha256_hex(struct sha256 *s, char out[65]);

/* ---- channel.c: vism channel (docs/channel.md) ---- */

/* Creates a channel for devid `peer` (0: any device), prints its token, waits for the peer to
 * join and streams the file at `path` into it, then closes. `timeout`: seconds an open peer may
 * stay silent (no heartbeat) before the transfer fails. */
int channel_send(struct ism *m, uint64_t peer, const char *path, double timeout);
/* Joins the channel with `token` and writes what arrives to `path` until the creator closes. */
int channel_recv(struct ism *m, uint64_t token, const char *path, double timeout);

#endif
