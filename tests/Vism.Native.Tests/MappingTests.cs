using Vism.Native;

namespace Vism.Native.Tests;

public class MappingTests
{
    [Theory]
    [InlineData(64UL << 10, 64UL << 10)]
    [InlineData(6UL << 20, 4UL << 20)]
    [InlineData(1UL << 30, 1UL << 30)]
    [InlineData(4UL << 30, 1UL << 30)]
    public void Reserve_AlignsTheWindowNaturallyUpTo1GiB_SoHugePagesCanBeMappedIntoIt(ulong length, ulong expectedAlignment)
    {
        using Mapping window = Mapping.Reserve(length);
        Assert.Equal(0UL, (ulong)window.Address % expectedAlignment);
        Assert.Equal(length, window.Length);
    }

    [Fact]
    public void MapFixed_PlacesAMemfdInsideTheReservation_AndUnmapFixedTakesItOutAgain()
    {
        using var fd = MemFd.Create("mapping-test", 8192);
        using Mapping window = Mapping.Reserve(1 << 20);
        using Mapping direct = Mapping.Map(fd, 0, 8192);
        window.MapFixed(4096, fd, 0, 8192, writable: true);
        window.Span(4096, 5)[..5].Fill(0x5a);
        Assert.Equal(0x5a, direct.Span(4, 1)[0]);
        window.UnmapFixed(4096, 8192);
        direct.Span(0, 1)[0] = 7;
        Assert.Throws<ArgumentOutOfRangeException>(() => window.MapFixed(1 << 20, fd, 0, 4096, true));
    }
}
