using Vism.Abstractions;

namespace Vism.Core;

/// <summary>
/// The device status transitions a driver may make (virtio 1.x 3.1.1): status bits accumulate
/// ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK in that order (several at once is allowed, except
/// that FEATURES_OK must be latched before DRIVER_OK so the driver could check it); FAILED may be
/// added at any time; nothing is ever cleared except by writing 0 (reset).
/// DEVICE_NEEDS_RESET belongs to the device: the driver's copy of that bit is ignored, and once
/// it is set only FAILED or a reset are accepted.
/// </summary>
public static class StatusTable
{
    private const DeviceStatus DriverBits = DeviceStatus.Acknowledge | DeviceStatus.Driver | DeviceStatus.FeaturesOk | DeviceStatus.DriverOk;
    private const DeviceStatus KnownBits = DriverBits | DeviceStatus.Failed | DeviceStatus.DeviceNeedsReset;

    /// <summary>The driver-bit states in the order a driver reaches them.</summary>
    public static IReadOnlyList<DeviceStatus> Sequence { get; } =
    [
        DeviceStatus.Reset,
        DeviceStatus.Acknowledge,
        DeviceStatus.Acknowledge | DeviceStatus.Driver,
        DeviceStatus.Acknowledge | DeviceStatus.Driver | DeviceStatus.FeaturesOk,
        DeviceStatus.Acknowledge | DeviceStatus.Driver | DeviceStatus.FeaturesOk | DeviceStatus.DriverOk,
    ];

    /// <summary>Checks a status write (other than 0, which always resets).</summary>
    /// <param name="current">The device's status.</param>
    /// <param name="requested">What the driver wrote, with DEVICE_NEEDS_RESET already taken from <paramref name="current"/>.</param>
    /// <returns>Null when allowed, otherwise why not.</returns>
    public static string? Check(DeviceStatus current, DeviceStatus requested)
    {
        if ((requested & ~KnownBits) != 0)
            return $"status 0x{(byte)requested:x2} has undefined bits";
        DeviceStatus cur = current & DriverBits;
        DeviceStatus req = requested & DriverBits;
        if ((current & DeviceStatus.Failed) != 0 && requested != current)
            return "the driver set FAILED; only a reset (0) is accepted";
        if ((current & DeviceStatus.DeviceNeedsReset) != 0 && req != cur)
            return "the device needs a reset; only FAILED or a reset (0) are accepted";
        if ((cur & ~req) != 0)
            return $"status 0x{(byte)requested:x2} clears bits of 0x{(byte)current:x2}; only writing 0 resets";
        int from = IndexOf(cur);
        int to = IndexOf(req);
        if (to < 0)
            return $"status 0x{(byte)requested:x2} is not a valid combination (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK are set in order)";
        if (to == 4 && from < 3)
            return "DRIVER_OK before FEATURES_OK was accepted";
        return null;
    }

    private static int IndexOf(DeviceStatus driverBits)
    {
        for (int i = 0; i < Sequence.Count; i++)
            if (Sequence[i] == driverBits)
                return i;
        return -1;
    }
}
