using Vism.Conformance.Probes;
using Vism.Native;

namespace Vism.Conformance.Tests;

/// <summary>The probes the suite trusts: a fault is reported, never raised as a signal.</summary>
public sealed class ProbeTests
{
    private static Mapping Map(Microsoft.Win32.SafeHandles.SafeFileHandle fd, bool writable) => Mapping.Map(fd, 0, 1 << 16, writable);

    [Fact]
    public void ReadsAndWritesThroughAWritableMappingLand()
    {
        using var fd = MemFd.Create("probe", 1 << 16);
        using Mapping map = Map(fd, writable: true);
        byte[] data = [.. Enumerable.Range(0, 40_000).Select(i => (byte)i)];
        Assert.True(SafeMemory.TryWrite(map.Address + 100, data));
        Assert.Equal(data, map.Span(100, data.Length).ToArray());
        byte[] back = new byte[data.Length];
        Assert.True(SafeMemory.TryRead(map.Address + 100, back));
        Assert.Equal(data, back);
        Assert.True(SafeMemory.IsWritable(map.Address));
    }

    [Fact]
    public void AWriteThroughAReadOnlyMappingIsReportedAndChangesNothing()
    {
        using var fd = MemFd.Create("probe", 1 << 16);
        using Mapping writer = Map(fd, writable: true);
        using Mapping reader = Map(fd, writable: false);
        writer.Span(0, 4)[0] = 7;
        Assert.False(SafeMemory.TryWrite(reader.Address, [1, 2, 3, 4]));
        Assert.False(SafeMemory.IsWritable(reader.Address));
        Assert.Equal(7, writer.Span(0, 1)[0]);
        byte[] one = new byte[1];
        Assert.True(SafeMemory.TryRead(reader.Address, one));
        Assert.Equal(7, one[0]);
    }

    [Fact]
    public void InaccessibleMemoryIsReportedForReadsAndWrites()
    {
        using Mapping reserved = Mapping.Reserve(1 << 16);
        Assert.False(SafeMemory.TryRead(reserved.Address, new byte[8]));
        Assert.False(SafeMemory.TryWrite(reserved.Address, new byte[8]));
        // The pipe is drained after a failed write: the next use still works.
        using var fd = MemFd.Create("probe", 1 << 16);
        using Mapping map = Map(fd, writable: true);
        Assert.True(SafeMemory.TryWrite(map.Address, [9]));
        Assert.Equal(9, map.Span(0, 1)[0]);
    }

    [Fact]
    public void TheMemoryMapShowsHowASharedMappingIsProtected()
    {
        using var fd = MemFd.Create("probe-maps", 1 << 16);
        using Mapping ro = Map(fd, writable: false);
        using Mapping rw = Map(fd, writable: true);
        MapsEntry r = Assert.Single(ProcMaps.Covering(ro.Address, 4096));
        Assert.True(r.Readable && r.Shared && !r.Writable);
        Assert.Contains("probe-maps", r.Path);
        MapsEntry w = Assert.Single(ProcMaps.Covering(rw.Address, 4096));
        Assert.True(w.Readable && w.Shared && w.Writable);
    }

    [Theory]
    [InlineData("7f0000000000-7f0000010000 rw-s 00000000 00:01 1234                       /memfd:vism (deleted)", 0x7f0000000000UL, 0x7f0000010000UL, "rw-s", "/memfd:vism (deleted)")]
    [InlineData("55d5c0000000-55d5c0021000 ---p 00000000 00:00 0 ", 0x55d5c0000000UL, 0x55d5c0021000UL, "---p", "")]
    public void MapsLinesAreParsed(string line, ulong start, ulong end, string perms, string path)
    {
        MapsEntry e = ProcMaps.Parse(line)!;
        Assert.Equal((start, end, perms, path), (e.Start, e.End, e.Permissions, e.Path));
    }

    [Fact]
    public void AMalformedMapsLineIsIgnored() => Assert.Null(ProcMaps.Parse("garbage"));
}
