namespace Vism.Core.Tests;

public sealed class DeviceLayoutTests
{
    private const ulong MiB = 1 << 20, GiB = 1 << 30;

    [Fact]
    public void A1GiBWindowOf1MiBRegionsHolds1022RegionsAndA2MiBNotifyWindow()
    {
        DeviceDescription d = DeviceLayout.Compute("d", 44, GiB, MiB, 1);
        Assert.Equal(1022, d.MaxRegions);
        Assert.Equal(1022 * MiB, d.RegionsWindowSize);
        Assert.Equal(2 * MiB, d.NotifyWindowSize);
        Assert.Equal(44u, d.VirtioId);
        Assert.Equal("d", d.Name);
    }

    [Fact]
    public void TheQemuLayoutSeenInPracticeIsReproduced()
    {
        DeviceDescription d = DeviceLayout.Compute("d", 45, GiB, 2 * MiB, 1);
        Assert.Equal(GiB - 2 * MiB, d.RegionsWindowSize);
        Assert.Equal(2 * MiB, d.NotifyWindowSize);
    }

    [Fact]
    public void TheIssue14LayoutIs2MiBAligned63MiBNoMore()
    {
        // Issue 14 point 4: 64 MiB with small regions gave a 63 MiB REGIONS window and a misaligned NOTIFY.
        DeviceDescription d = DeviceLayout.Compute("d", 44, 64 * MiB, 64 * 1024, 1);
        Assert.Equal(62 * MiB, d.RegionsWindowSize);
        Assert.Equal(2 * MiB, d.NotifyWindowSize);
        Assert.Equal(62 * 16, d.MaxRegions);
    }

    [Fact]
    public void EveryValidLayoutFillsAPowerOfTwoWindowWith2MiBAlignedWindowsAndTheMostRegionsWhoseNotifySlotsFit()
    {
        const ulong Align = 2 * MiB;
        int checkedLayouts = 0;
        for (int w = 22; w <= 34; w++)
            for (int r = 12; r < w; r++)
                foreach (ulong notify in new ulong[] { 1, 2, 8, 64, 4096, 1UL << r })
                {
                    ulong window = 1UL << w, region = 1UL << r;
                    ulong unit = Math.Max(region, Align);
                    if (notify > region || window < 2 * unit)
                        continue;
                    DeviceDescription d = DeviceLayout.Compute("d", 44, window, region, notify);
                    ulong regions = (ulong)d.MaxRegions;
                    Assert.Equal(window, d.RegionsWindowSize + d.NotifyWindowSize);
                    Assert.Equal(regions * region, d.RegionsWindowSize);
                    Assert.Equal(0UL, d.RegionsWindowSize % Align);
                    Assert.Equal(0UL, d.NotifyWindowSize % Align);
                    Assert.True(regions * notify <= d.NotifyWindowSize);
                    // Giving NOTIFY one 2 MiB-aligned unit less would not leave room for the notify slots of the regions then.
                    ulong moreRegions = (window - (d.NotifyWindowSize - unit)) / region;
                    Assert.True(d.NotifyWindowSize == unit || RoundUp(moreRegions * notify) > d.NotifyWindowSize - unit, $"{window}/{region}/{notify}");
                    checkedLayouts++;
                }
        Assert.True(checkedLayouts > 1000);
    }

    private static ulong RoundUp(ulong v) => (v + 4095) / 4096 * 4096;

    [Theory]
    [InlineData(3 * MiB, MiB, 1ul)]        // window not a power of two
    [InlineData(64 * MiB, 3 * 4096, 1ul)]  // region not a power of two
    [InlineData(64 * MiB, 2048, 1ul)]      // region below a page
    [InlineData(MiB, MiB, 1ul)]            // no room for the notify window
    [InlineData(MiB, 2 * MiB, 1ul)]
    [InlineData(2 * MiB, 4096, 1ul)]       // REGIONS and NOTIFY need 2 MiB each
    [InlineData(4 * MiB, 4 * MiB, 1ul)]
    [InlineData(64 * MiB, MiB, 0ul)]       // notify size 0
    [InlineData(64 * MiB, 4096, 8192ul)]   // notify slot larger than a region
    public void InvalidSizesAreRefused(ulong window, ulong region, ulong notify)
    {
        Assert.Throws<ArgumentException>(() => DeviceLayout.Compute("d", 44, window, region, notify));
    }
}
