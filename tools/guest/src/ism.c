/* The virtio-ism device (v1 wire format): start it, control requests on the controlq, update
 * events on the eventq, region access through the REGIONS window, notify through NOTIFY. */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>

#include "vism-guest.h"

/* struct virtio_ism_config */
#define CFG_GID 0
#define CFG_DEVID 8
#define CFG_REGION_SIZE 16
#define CFG_NOTIFY_SIZE 24
#define CFG_SIZE 32

#define QUEUE_ENTRIES 64
#define CTRL_BUF 64

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static int post_event_buffer(struct ism *m, int buf)
{
    struct vq_buf b = {m->ev_pa[buf], ISM_EVENT_BUFFER_SIZE, 1};
    int head = vq_add(&m->v.vqs[1], &b, 1, m->v.started);
    if (head < 0 || head >= (int)(sizeof m->ev_head_to_buf / sizeof m->ev_head_to_buf[0])) {
        errorf("eventq has no room for buffer %d", buf);
        return EXIT_DEVICE;
    }
    m->ev_head_to_buf[head] = buf + 1;
    return EXIT_OK;
}

static int start(struct ism *m)
{
    struct vdev *v = &m->v;
    if (!v->shm[VIRTIO_ISM_SHM_ID_REGIONS].present) {
        errorf("%s: missing capability: shared memory REGIONS (VIRTIO_PCI_CAP_SHARED_MEMORY_CFG, shmid 1)",
               v->pci.addr);
        return EXIT_DEVICE;
    }
    int rc = dma_init(&v->dma, 2u << 20);
    if (rc)
        return rc;
    uint64_t wanted = 1ULL << VIRTIO_F_VERSION_1 | 1ULL << VIRTIO_ISM_F_EVENT_VQ | 1ULL << VIRTIO_F_ACCESS_PLATFORM
        | 1ULL << VIRTIO_F_ORDER_PLATFORM;
    if ((rc = virtio_negotiate(v, wanted)))
        return rc;
    uint8_t cfg[CFG_SIZE];
    if (v->devcfg_len < CFG_SIZE) {
        errorf("%s: device config is %llu bytes; struct virtio_ism_config needs %d", v->pci.addr,
               (unsigned long long)v->devcfg_len, CFG_SIZE);
        return EXIT_DEVICE;
    }
    if ((rc = virtio_read_config(v, 0, cfg, sizeof cfg)))
        return rc;
    m->gid = get_le64(cfg + CFG_GID);
    m->devid = get_le64(cfg + CFG_DEVID);
    m->region_size = get_le64(cfg + CFG_REGION_SIZE);
    m->notify_size = get_le64(cfg + CFG_NOTIFY_SIZE);
    if (m->region_size == 0) {
        errorf("%s: device config reports region_size 0", v->pci.addr);
        return EXIT_DEVICE;
    }
    m->regions = v->shm[VIRTIO_ISM_SHM_ID_REGIONS].base;
    m->regions_len = v->shm[VIRTIO_ISM_SHM_ID_REGIONS].length;
    if (v->shm[VIRTIO_ISM_SHM_ID_NOTIFY].present) {
        m->notify = v->shm[VIRTIO_ISM_SHM_ID_NOTIFY].base;
        m->notify_len = v->shm[VIRTIO_ISM_SHM_ID_NOTIFY].length;
    }
    m->has_eventq = (v->features >> VIRTIO_ISM_F_EVENT_VQ) & 1;
    if (m->has_eventq && !m->notify) {
        errorf("%s: missing capability: shared memory NOTIFY (shmid 2), required with VIRTIO_ISM_F_EVENT_VQ",
               v->pci.addr);
        return EXIT_DEVICE;
    }
    if ((rc = virtio_setup_queue(v, 0, QUEUE_ENTRIES)))
        return rc;
    if (m->has_eventq && (rc = virtio_setup_queue(v, 1, QUEUE_ENTRIES)))
        return rc;
    m->ctrl_out = dma_alloc(&v->dma, CTRL_BUF, 64, &m->ctrl_out_pa);
    m->ctrl_in = dma_alloc(&v->dma, CTRL_BUF, 64, &m->ctrl_in_pa);
    if (!m->ctrl_out || !m->ctrl_in)
        return EXIT_SYSTEM;
    if (m->has_eventq) {
        int nbuf = ISM_EVENT_BUFFERS < v->vqs[1].size ? ISM_EVENT_BUFFERS : v->vqs[1].size;
        for (int i = 0; i < nbuf; i++) {
            m->ev_buf[i] = dma_alloc(&v->dma, ISM_EVENT_BUFFER_SIZE, 64, &m->ev_pa[i]);
            if (!m->ev_buf[i])
                return EXIT_SYSTEM;
            if ((rc = post_event_buffer(m, i)))
                return rc;
        }
    }
    if ((rc = virtio_driver_ok(v)))
        return rc;
    if (m->has_eventq)
        vq_kick(&v->vqs[1]); /* buffers were made available before DRIVER_OK */
    return EXIT_OK;
}

int ism_open(struct ism *m, uint32_t id, const char *pci_addr, double timeout)
{
    memset(m, 0, sizeof *m);
    m->timeout = timeout;
    uint32_t ids[2] = {id ? id : 44, 45};
    int n = id ? 1 : 2, rc = EXIT_NODEV;
    for (int i = 0; i < n && rc == EXIT_NODEV; i++)
        rc = virtio_open(&m->v, ids[i], pci_addr);
    if (rc == EXIT_NODEV) {
        if (id)
            errorf("no virtio-ism device: no PCI function 1af4:%04x (virtio id %u)%s%s", 0x1040 + id, id,
                   pci_addr ? " at " : "", pci_addr ? pci_addr : "");
        else
            errorf("no virtio-ism device: no PCI function 1af4:106c (virtio id 44) or 1af4:106d (virtio id 45)%s%s; "
                   "was the VM started with a vism device?", pci_addr ? " at " : "", pci_addr ? pci_addr : "");
        return rc;
    }
    if (rc)
        return rc;
    rc = start(m);
    if (rc)
        ism_close(m);
    return rc;
}

void ism_close(struct ism *m) { virtio_close(&m->v); }

/* One control request: {class, command, data} then {ack, reply}. Waits (polling) for the device. */
static int ctrl(struct ism *m, const char *what, uint8_t cls, const void *data, size_t dlen, void *reply, size_t rlen)
{
    struct vq *q = &m->v.vqs[0];
    if (dlen > CTRL_BUF - 2 || rlen > CTRL_BUF - 1)
        return EXIT_USAGE;
    m->ctrl_out[0] = cls;
    m->ctrl_out[1] = 0; /* the only command of each class */
    memcpy(m->ctrl_out + 2, data, dlen);
    memset(m->ctrl_in, 0xff, CTRL_BUF); /* an ack the device never wrote shows as 0xff */
    struct vq_buf bufs[2] = {{m->ctrl_out_pa, (uint32_t)(2 + dlen), 0}, {m->ctrl_in_pa, (uint32_t)(1 + rlen), 1}};
    int head = vq_add(q, bufs, 2, 1);
    if (head < 0) {
        errorf("%s: the controlq is full", what);
        return EXIT_DEVICE;
    }
    double deadline = now_seconds() + m->timeout;
    struct vring_used_elem e;
    for (int spin = 0;; spin++) {
        if (vq_get_used(q, &e))
            break;
        if (g_stop)
            return EXIT_STOPPED;
        if (spin % 64 == 63 && (virtio_status(&m->v) & VIRTIO_STATUS_NEEDS_RESET)) {
            errorf("%s: the device set DEVICE_NEEDS_RESET", what);
            return EXIT_TIMEOUT;
        }
        if (now_seconds() > deadline) {
            errorf("%s: the device did not answer within %g s (controlq request not used)", what, m->timeout);
            return EXIT_TIMEOUT;
        }
        if (spin > 100)
            sleep_ms(1);
    }
    if (e.id != (uint32_t)head) {
        errorf("%s: the device returned descriptor %u, %d was in flight", what, e.id, head);
        return EXIT_DEVICE;
    }
    vq_free_chain(q, (uint16_t)head);
    uint8_t ack = m->ctrl_in[0];
    if (e.len < 1 || ack == 0xff) {
        errorf("%s: the device wrote no ack (used length %u)", what, e.len);
        return EXIT_DEVICE;
    }
    if (ack != VIRTIO_ISM_OK) {
        errorf("%s: the device refused the request (ack %u = VIRTIO_ISM_ERR)", what, ack);
        return EXIT_ERR_ACK;
    }
    if (e.len < 1 + rlen) {
        errorf("%s: the device wrote %u bytes (used length); the ack and reply are %zu", what, e.len, 1 + rlen);
        return EXIT_DEVICE;
    }
    if (rlen)
        memcpy(reply, m->ctrl_in + 1, rlen);
    return EXIT_OK;
}

static struct ism_region *find_region(struct ism *m, uint64_t offset)
{
    for (int i = 0; i < m->nknown; i++) {
        struct ism_region *r = &m->known[i];
        if (offset >= r->offset && offset - r->offset < r->size)
            return r;
    }
    return NULL;
}

/* Checks an offset the device returned and records the region. */
static int remember(struct ism *m, const char *what, uint64_t offset, uint64_t size, uint64_t token)
{
    if (offset > m->regions_len || size > m->regions_len - offset) {
        errorf("%s: the device returned offset %#llx, outside the REGIONS window (%#llx bytes)", what,
               (unsigned long long)offset, (unsigned long long)m->regions_len);
        return EXIT_DEVICE;
    }
    struct ism_region *r = find_region(m, offset);
    if (!r) {
        if (m->nknown == ISM_MAX_KNOWN) {
            errorf("%s: more than %d regions in one run", what, ISM_MAX_KNOWN);
            return EXIT_USAGE;
        }
        r = &m->known[m->nknown++];
    }
    r->offset = offset;
    r->size = size;
    r->token = token;
    return EXIT_OK;
}

int ism_alloc(struct ism *m, uint64_t size, uint64_t *token, uint64_t *offset)
{
    uint8_t data[8], reply[16];
    put_le64(data, size);
    int rc = ctrl(m, "alloc", VIRTIO_ISM_CTRL_ALLOC, data, sizeof data, reply, sizeof reply);
    if (rc)
        return rc;
    *token = get_le64(reply);
    *offset = get_le64(reply + 8);
    return remember(m, "alloc", *offset, size ? size : m->region_size, *token);
}

int ism_attach(struct ism *m, uint64_t token, uint64_t *offset)
{
    uint8_t data[8], reply[8];
    put_le64(data, token);
    int rc = ctrl(m, "attach", VIRTIO_ISM_CTRL_ATTACH, data, sizeof data, reply, sizeof reply);
    if (rc)
        return rc;
    *offset = get_le64(reply);
    /* The attacher does not learn the allocated size; the region's slot is region_size. */
    uint64_t size = m->region_size;
    if (*offset <= m->regions_len && size > m->regions_len - *offset)
        size = m->regions_len - *offset;
    return remember(m, "attach", *offset, size, token);
}

int ism_detach(struct ism *m, uint64_t offset)
{
    uint8_t data[8];
    put_le64(data, offset);
    int rc = ctrl(m, "detach", VIRTIO_ISM_CTRL_DETACH, data, sizeof data, NULL, 0);
    if (rc)
        return rc;
    struct ism_region *r = find_region(m, offset);
    if (r)
        *r = m->known[--m->nknown];
    return EXIT_OK;
}

int ism_grant(struct ism *m, uint64_t offset, uint64_t peer, uint64_t perms)
{
    uint8_t data[24];
    put_le64(data, offset);
    put_le64(data + 8, peer);
    put_le64(data + 16, perms);
    return ctrl(m, "grant", VIRTIO_ISM_CTRL_GRANT, data, sizeof data, NULL, 0);
}

/* The range must lie inside one region this process allocated or attached. */
static int check_range(struct ism *m, const char *what, uint64_t offset, size_t len)
{
    struct ism_region *r = find_region(m, offset);
    if (!r) {
        errorf("%s: offset %#llx is in no region this run allocated or attached", what, (unsigned long long)offset);
        return EXIT_USAGE;
    }
    if (len > r->size - (offset - r->offset)) {
        errorf("%s: [%#llx, +%zu) runs past the end of the region at %#llx (%llu bytes)", what,
               (unsigned long long)offset, len, (unsigned long long)r->offset, (unsigned long long)r->size);
        return EXIT_USAGE;
    }
    return EXIT_OK;
}

int ism_write(struct ism *m, uint64_t offset, const void *data, size_t len)
{
    int rc = check_range(m, "write", offset, len);
    if (rc)
        return rc;
    const uint8_t *src = data;
    for (size_t i = 0; i < len; i++)
        m->regions[offset + i] = src[i];
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return EXIT_OK;
}

int ism_read(struct ism *m, uint64_t offset, void *out, size_t len)
{
    int rc = check_range(m, "read", offset, len);
    if (rc)
        return rc;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint8_t *dst = out;
    for (size_t i = 0; i < len; i++)
        dst[i] = m->regions[offset + i];
    return EXIT_OK;
}

int ism_notify(struct ism *m, uint64_t offset, uint64_t *slot, unsigned *written)
{
    struct ism_region *r = find_region(m, offset);
    if (!r) {
        errorf("notify: offset %#llx is in no region this run allocated or attached", (unsigned long long)offset);
        return EXIT_USAGE;
    }
    if (!m->notify || m->notify_size == 0) {
        errorf("notify: the device has no NOTIFY window (shmid 2) or notify_size is 0");
        return EXIT_DEVICE;
    }
    *slot = r->offset / m->region_size;
    if (*slot >= m->notify_len / m->notify_size) {
        errorf("notify: slot %llu lies outside the NOTIFY window (%llu bytes, %llu per slot)",
               (unsigned long long)*slot, (unsigned long long)m->notify_len, (unsigned long long)m->notify_size);
        return EXIT_DEVICE;
    }
    /* Region writes must be visible before the notify. The written value changes on every
     * notify: a device that polls the window (vism over vhost-user) sees a store only as a slot
     * that differs from what it saw last, and never writes the window itself; a trapped window
     * (MMIO) sees every store. vism scans the window before it serves each control request, so
     * a detach sent right after this cannot overtake the notify. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    volatile uint8_t *p = m->notify + *slot * m->notify_size;
    uint8_t value = (uint8_t)(*p + 1);
    *p = value;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    *written = value;
    return g_stop ? EXIT_STOPPED : EXIT_OK;
}

int ism_wait(struct ism *m, double timeout, struct ism_event *ev)
{
    if (!m->has_eventq) {
        errorf("wait: the device offers no eventq (VIRTIO_ISM_F_EVENT_VQ not negotiated)");
        return EXIT_DEVICE;
    }
    struct vq *q = &m->v.vqs[1];
    double deadline = now_seconds() + timeout;
    struct vring_used_elem e;
    for (int spin = 0; !vq_get_used(q, &e); spin++) {
        if (g_stop)
            return EXIT_STOPPED;
        if (spin % 256 == 255 && (virtio_status(&m->v) & VIRTIO_STATUS_NEEDS_RESET)) {
            errorf("wait: the device set DEVICE_NEEDS_RESET");
            return EXIT_TIMEOUT;
        }
        if (now_seconds() > deadline) {
            errorf("wait: no event within %g s", timeout);
            return EXIT_NO_EVENT;
        }
        sleep_ms(spin < 100 ? 0 : 2);
    }
    if (e.id >= q->size || m->ev_head_to_buf[e.id] == 0) {
        errorf("wait: the device returned eventq descriptor %u, which holds no posted buffer", e.id);
        return EXIT_DEVICE;
    }
    int buf = m->ev_head_to_buf[e.id] - 1;
    m->ev_head_to_buf[e.id] = 0;
    vq_free_chain(q, (uint16_t)e.id);
    uint32_t len = e.len < ISM_EVENT_BUFFER_SIZE ? e.len : ISM_EVENT_BUFFER_SIZE;
    int rc = EXIT_OK;
    if (len < 8) {
        errorf("wait: the device wrote %u bytes of event, struct virtio_ism_event needs at least 8", e.len);
        rc = EXIT_DEVICE;
    } else {
        ev->num = get_le64(m->ev_buf[buf]);
        uint64_t present = (len - 8) / 8;
        ev->count = ev->num < present ? ev->num : present;
        for (uint64_t i = 0; i < ev->count; i++)
            ev->offsets[i] = get_le64(m->ev_buf[buf] + 8 + 8 * i);
    }
    memset(m->ev_buf[buf], 0, ISM_EVENT_BUFFER_SIZE);
    int repost = post_event_buffer(m, buf);
    return rc ? rc : repost;
}
