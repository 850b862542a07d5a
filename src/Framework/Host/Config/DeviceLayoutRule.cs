using Vism.Abstractions;

namespace Vism.Host.Config;

// Interim copy of Core's DeviceLayout.Compute rule until Core is on main; replaced by a call to it then.
internal static class DeviceLayoutRule
{
    private const ulong PageSize = 4096;

    public static DeviceDescription Compute(string name, uint virtioId, ulong windowSize, ulong regionSize, ulong notifySize)
    {
        ulong total = windowSize / regionSize;
        for (ulong k = 1; k < total; k++)
        {
            ulong regions = total - k;
            ulong notifyBytes = regions * notifySize;
            ulong notifyWindow = k * regionSize;
            if ((notifyBytes + PageSize - 1) / PageSize * PageSize <= notifyWindow)
                return new DeviceDescription
                {
                    Name = name, VirtioId = virtioId, RegionSize = regionSize, NotifySize = notifySize,
                    MaxRegions = (int)regions, RegionsWindowSize = regions * regionSize, NotifyWindowSize = notifyWindow,
                };
        }
        throw new ArgumentException($"a {windowSize}-byte window holds no {regionSize}-byte region with its {notifySize}-byte notify slot", nameof(windowSize));
    }
}
