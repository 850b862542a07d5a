namespace Vism.Abstractions;

/// <summary>Numbers fixed by the virtio 1.x specification and the virtio-ism v1 device chapter.</summary>
public static class Virtio
{
    /// <summary>The virtio device ID reserved for ISM (v1 proposed 43; the registry gave it 44).</summary>
    public const uint IsmDeviceId = 44;

    /// <summary>PCI vendor ID of every virtio device.</summary>
    public const ushort PciVendorId = 0x1af4;

    /// <summary>Modern virtio PCI device IDs are this value plus the virtio device ID.</summary>
    public const ushort PciDeviceIdBase = 0x1040;

    /// <summary>Virtio MMIO vendor ID reported by vism ("VISM" would not fit; this is 'v','i','s','m' little endian).</summary>
    public const uint MmioVendorId = 0x6d736976;

    /// <summary>Size in bytes of <c>struct virtio_ism_config</c> (gid, devid, region_size, notify_size).</summary>
    public const int IsmConfigSize = 32;

    /// <summary>Index of the control virtqueue.</summary>
    public const int ControlQueue = 0;

    /// <summary>Index of the event virtqueue (present only when <see cref="Features.IsmEventVq"/> is negotiated).</summary>
    public const int EventQueue = 1;
}

/// <summary>Feature bit numbers (not masks). Use <see cref="Features.Mask"/> to build a mask.</summary>
public static class Features
{
    /// <summary>VIRTIO_ISM_F_EVENT_VQ: the driver receives region update events on the eventq.</summary>
    public const int IsmEventVq = 0;

    /// <summary>VIRTIO_ISM_F_EVENT_IRQ: each region is bound to an interrupt vector with EVENT_VECTOR.</summary>
    public const int IsmEventIrq = 1;

    /// <summary>VIRTIO_F_INDIRECT_DESC: indirect descriptor tables.</summary>
    public const int RingIndirectDesc = 28;

    /// <summary>VIRTIO_F_EVENT_IDX: used_event / avail_event notification suppression.</summary>
    public const int RingEventIdx = 29;

    /// <summary>VIRTIO_F_VERSION_1: compliance with virtio 1.x. Always offered and required.</summary>
    public const int Version1 = 32;

    /// <summary>VIRTIO_F_RING_RESET: per-queue reset.</summary>
    public const int RingReset = 40;

    /// <summary>Returns the mask with the given bit numbers set.</summary>
    /// <param name="bits">Feature bit numbers, each 0..63.</param>
    public static ulong Mask(params ReadOnlySpan<int> bits)
    {
        ulong mask = 0;
        foreach (int bit in bits)
        {
            ArgumentOutOfRangeException.ThrowIfNegative(bit);
            ArgumentOutOfRangeException.ThrowIfGreaterThan(bit, 63);
            mask |= 1UL << bit;
        }
        return mask;
    }

    /// <summary>Whether <paramref name="bit"/> is set in <paramref name="features"/>.</summary>
    /// <param name="features">A feature mask.</param>
    /// <param name="bit">A bit number, 0..63.</param>
    public static bool Has(ulong features, int bit) => bit is >= 0 and < 64 && (features & (1UL << bit)) != 0;
}

/// <summary>The virtio device status field (virtio 1.x section 2.1).</summary>
[Flags]
public enum DeviceStatus : byte
{
    /// <summary>Reset state: the driver has not touched the device.</summary>
    Reset = 0,

    /// <summary>The guest OS has found the device.</summary>
    Acknowledge = 1,

    /// <summary>The guest OS knows how to drive the device.</summary>
    Driver = 2,

    /// <summary>The driver is set up and ready to drive the device.</summary>
    DriverOk = 4,

    /// <summary>The driver has acknowledged the features it understands; negotiation is complete.</summary>
    FeaturesOk = 8,

    /// <summary>The device has hit an error it cannot recover from; the driver must reset it.</summary>
    DeviceNeedsReset = 64,

    /// <summary>The driver has given up on the device.</summary>
    Failed = 128,
}

/// <summary>Shared-memory region identifiers of the ISM device (v1 <c>enum virtio_ism_shm_id</c>).</summary>
public enum ShmId : byte
{
    /// <summary>VIRTIO_ISM_SHM_ID_UNDEFINED.</summary>
    Undefined = 0,

    /// <summary>VIRTIO_ISM_SHM_ID_REGIONS: the window ISM regions are mapped into.</summary>
    Regions = 1,

    /// <summary>VIRTIO_ISM_SHM_ID_NOTIFY: one notify slot of <c>notify_size</c> bytes per region.</summary>
    Notify = 2,
}

/// <summary>ISM control-queue classes, commands, acks and permission bits (v1 wire format).</summary>
public static class IsmControl
{
    /// <summary>VIRTIO_ISM_OK.</summary>
    public const byte AckOk = 0;

    /// <summary>VIRTIO_ISM_ERR.</summary>
    public const byte AckErr = 1;

    /// <summary>Class VIRTIO_ISM_CTRL_ALLOC; command ALLOC_REGION = 0; data <c>le64 size</c>; reply <c>le64 token, le64 offset</c>.</summary>
    public const byte ClassAlloc = 0;

    /// <summary>Class VIRTIO_ISM_CTRL_ATTACH; command ATTACH_REGION = 0; data <c>le64 token</c>; reply <c>le64 offset</c>.</summary>
    public const byte ClassAttach = 1;

    /// <summary>Class VIRTIO_ISM_CTRL_DETACH; command DETACH_REGION = 0; data <c>le64 offset</c>.</summary>
    public const byte ClassDetach = 2;

    /// <summary>Class VIRTIO_ISM_CTRL_GRANT; command GRANT_SET = 0; data <c>le64 offset, le64 peer_devid, le64 permissions</c>.</summary>
    public const byte ClassGrant = 3;

    /// <summary>Class VIRTIO_ISM_CTRL_EVENT_VECTOR; command SET = 0; data <c>le64 offset, le64 vector</c>.</summary>
    public const byte ClassEventVector = 4;

    /// <summary>The only command defined in each class.</summary>
    public const byte CommandDefault = 0;
}

/// <summary>Region permission bits (VIRTIO_ISM_PERM_*).</summary>
[Flags]
public enum IsmPermissions : ulong
{
    /// <summary>No permission.</summary>
    None = 0,

    /// <summary>VIRTIO_ISM_PERM_READ: the region may be read after attach.</summary>
    Read = 1 << 0,

    /// <summary>VIRTIO_ISM_PERM_WRITE: the region may be written after attach.</summary>
    Write = 1 << 1,

    /// <summary>VIRTIO_ISM_PERM_ATTACH: the region may be attached.</summary>
    Attach = 1 << 2,

    /// <summary>VIRTIO_ISM_PERM_MANAGE: the holder may change the region's permissions.</summary>
    Manage = 1 << 3,

    /// <summary>VIRTIO_ISM_PERM_DENY_OTHER: devices without their own entry may not attach.</summary>
    DenyOther = 1 << 4,

    /// <summary>Every defined bit.</summary>
    All = Read | Write | Attach | Manage | DenyOther,
}
