using Vism.Abstractions;

namespace Vism.Core;

/// <summary>
/// Lays out a device's shared-memory window: REGIONS (shmid 1) and NOTIFY (shmid 2) back to back,
/// their total a power of two (QEMU puts both in one PCI BAR, whose size must be a power of two).
/// </summary>
public static class DeviceLayout
{
    /// <summary>The page size every window offset and length is a multiple of.</summary>
    public const ulong PageSize = TransportRules.PageSize;

    /// <summary>
    /// Computes the layout. The REGIONS window holds as many <paramref name="regionSize"/> slots as
    /// fit while the rest of the window still holds one <paramref name="notifySize"/> notify slot per
    /// region, rounded up to a page. With 1 GiB, 1 MiB regions and 1-byte notify slots that is 1023
    /// regions and a 1 MiB NOTIFY window.
    /// </summary>
    /// <param name="name">The device name.</param>
    /// <param name="virtioId">The virtio device ID.</param>
    /// <param name="windowSize">REGIONS + NOTIFY in bytes: a power of two, larger than <paramref name="regionSize"/>.</param>
    /// <param name="regionSize"><c>region_size</c>: a power of two, at least 4 KiB.</param>
    /// <param name="notifySize"><c>notify_size</c>: 1 to <paramref name="regionSize"/> bytes.</param>
    /// <returns>The device description.</returns>
    /// <exception cref="ArgumentException">When a size breaks one of the rules above.</exception>
    public static DeviceDescription Compute(string name, uint virtioId, ulong windowSize, ulong regionSize, ulong notifySize)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (!ulong.IsPow2(regionSize) || regionSize < PageSize)
            throw new ArgumentException($"region size {regionSize} must be a power of two of at least {PageSize} bytes", nameof(regionSize));
        if (!ulong.IsPow2(windowSize) || windowSize <= regionSize)
            throw new ArgumentException($"window size {windowSize} must be a power of two larger than the region size {regionSize}", nameof(windowSize));
        if (notifySize == 0 || notifySize > regionSize)
            throw new ArgumentException($"notify size {notifySize} must be between 1 and the region size {regionSize}", nameof(notifySize));

        ulong total = windowSize / regionSize;
        // Give up k region slots to the NOTIFY window until the notify slots of the rest fit in it.
        for (ulong k = 1; k < total; k++)
        {
            ulong regions = total - k;
            ulong notifyBytes = regions * notifySize; // regions * notifySize <= total * regionSize = windowSize: no overflow
            ulong notifyWindow = k * regionSize;
            if (RoundUp(notifyBytes, PageSize) <= notifyWindow)
            {
                if (regions > int.MaxValue)
                    throw new ArgumentException($"{regions} regions are too many; use larger regions", nameof(regionSize));
                return new DeviceDescription
                {
                    Name = name,
                    VirtioId = virtioId,
                    RegionSize = regionSize,
                    NotifySize = notifySize,
                    MaxRegions = (int)regions,
                    RegionsWindowSize = regions * regionSize,
                    NotifyWindowSize = notifyWindow,
                };
            }
        }
        throw new ArgumentException($"a {windowSize}-byte window holds no {regionSize}-byte region with its {notifySize}-byte notify slot", nameof(windowSize));
    }

    internal static ulong RoundUp(ulong value, ulong align) =>
        value % align == 0 ? value : value + (align - value % align);
}
