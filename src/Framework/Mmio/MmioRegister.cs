namespace Vism.Mmio;

/// <summary>Offsets and fixed values of the virtio-mmio version 2 register window
/// (virtio 1.x section 4.2.2, "MMIO Device Register Layout").</summary>
public static class MmioRegister
{
    /// <summary>MagicValue (R): 0x74726976, "virt" little endian.</summary>
    public const uint MagicValue = 0x000;

    /// <summary>Version (R): 2.</summary>
    public const uint Version = 0x004;

    /// <summary>DeviceID (R): the virtio device ID.</summary>
    public const uint DeviceId = 0x008;

    /// <summary>VendorID (R).</summary>
    public const uint VendorId = 0x00c;

    /// <summary>DeviceFeatures (R): 32 feature bits selected by <see cref="DeviceFeaturesSel"/>.</summary>
    public const uint DeviceFeatures = 0x010;

    /// <summary>DeviceFeaturesSel (W).</summary>
    public const uint DeviceFeaturesSel = 0x014;

    /// <summary>DriverFeatures (W): 32 feature bits selected by <see cref="DriverFeaturesSel"/>.</summary>
    public const uint DriverFeatures = 0x020;

    /// <summary>DriverFeaturesSel (W).</summary>
    public const uint DriverFeaturesSel = 0x024;

    /// <summary>QueueSel (W): the queue the queue registers apply to.</summary>
    public const uint QueueSel = 0x030;

    /// <summary>QueueNumMax (R): the largest size of the selected queue, 0 when it does not exist.</summary>
    public const uint QueueNumMax = 0x034;

    /// <summary>QueueNum (W): the size the driver uses.</summary>
    public const uint QueueNum = 0x038;

    /// <summary>QueueReady (RW): 1 starts the selected queue; reads the last value that took effect.</summary>
    public const uint QueueReady = 0x044;

    /// <summary>QueueNotify (W): the index of a queue with new buffers.</summary>
    public const uint QueueNotify = 0x050;

    /// <summary>InterruptStatus (R): <see cref="InterruptUsedBuffer"/> and <see cref="InterruptConfigChange"/>.</summary>
    public const uint InterruptStatus = 0x060;

    /// <summary>InterruptACK (W): clears the written bits of <see cref="InterruptStatus"/>.</summary>
    public const uint InterruptAck = 0x064;

    /// <summary>Status (RW): the device status; writing 0 resets the device.</summary>
    public const uint Status = 0x070;

    /// <summary>QueueDescLow (W).</summary>
    public const uint QueueDescLow = 0x080;

    /// <summary>QueueDescHigh (W).</summary>
    public const uint QueueDescHigh = 0x084;

    /// <summary>QueueDriverLow (W): the available ring.</summary>
    public const uint QueueDriverLow = 0x090;

    /// <summary>QueueDriverHigh (W).</summary>
    public const uint QueueDriverHigh = 0x094;

    /// <summary>QueueDeviceLow (W): the used ring.</summary>
    public const uint QueueDeviceLow = 0x0a0;

    /// <summary>QueueDeviceHigh (W).</summary>
    public const uint QueueDeviceHigh = 0x0a4;

    /// <summary>SHMSel (W): the shared-memory id the SHM registers apply to.</summary>
    public const uint ShmSel = 0x0ac;

    /// <summary>SHMLenLow (R): all ones for an id the device does not have.</summary>
    public const uint ShmLenLow = 0x0b0;

    /// <summary>SHMLenHigh (R).</summary>
    public const uint ShmLenHigh = 0x0b4;

    /// <summary>SHMBaseLow (R): guest-physical base, as the VMM placed the window; all ones for a missing id.</summary>
    public const uint ShmBaseLow = 0x0b8;

    /// <summary>SHMBaseHigh (R).</summary>
    public const uint ShmBaseHigh = 0x0bc;

    /// <summary>QueueReset (RW): 1 resets the selected queue (needs VIRTIO_F_RING_RESET); reads 0 once done.</summary>
    public const uint QueueReset = 0x0c0;

    /// <summary>ConfigGeneration (R).</summary>
    public const uint ConfigGeneration = 0x0fc;

    /// <summary>First byte of the device configuration space.</summary>
    public const uint Config = 0x100;

    /// <summary>The value of <see cref="MagicValue"/>.</summary>
    public const uint Magic = 0x74726976;

    /// <summary>The value of <see cref="Version"/> (the non-legacy interface).</summary>
    public const uint CurrentVersion = 2;

    /// <summary>InterruptStatus bit 0: a used buffer notification.</summary>
    public const uint InterruptUsedBuffer = 1;

    /// <summary>InterruptStatus bit 1: a configuration change notification.</summary>
    public const uint InterruptConfigChange = 2;

    /// <summary>SHMLen and SHMBase of a shared-memory id the device does not have.</summary>
    public const ulong NoSharedMemory = ulong.MaxValue;

    /// <summary>The register name of <paramref name="offset"/> for log messages (hex offset when unnamed).</summary>
    /// <param name="offset">A byte offset in the window.</param>
    public static string Name(uint offset) => offset switch
    {
        MagicValue => "MagicValue",
        Version => "Version",
        DeviceId => "DeviceID",
        VendorId => "VendorID",
        DeviceFeatures => "DeviceFeatures",
        DeviceFeaturesSel => "DeviceFeaturesSel",
        DriverFeatures => "DriverFeatures",
        DriverFeaturesSel => "DriverFeaturesSel",
        QueueSel => "QueueSel",
        QueueNumMax => "QueueNumMax",
        QueueNum => "QueueNum",
        QueueReady => "QueueReady",
        QueueNotify => "QueueNotify",
        InterruptStatus => "InterruptStatus",
        InterruptAck => "InterruptACK",
        Status => "Status",
        QueueDescLow => "QueueDescLow",
        QueueDescHigh => "QueueDescHigh",
        QueueDriverLow => "QueueDriverLow",
        QueueDriverHigh => "QueueDriverHigh",
        QueueDeviceLow => "QueueDeviceLow",
        QueueDeviceHigh => "QueueDeviceHigh",
        ShmSel => "SHMSel",
        ShmLenLow => "SHMLenLow",
        ShmLenHigh => "SHMLenHigh",
        ShmBaseLow => "SHMBaseLow",
        ShmBaseHigh => "SHMBaseHigh",
        QueueReset => "QueueReset",
        ConfigGeneration => "ConfigGeneration",
        >= Config => $"Config+0x{offset - Config:x}",
        _ => $"0x{offset:x3}",
    };
}
