using Vism.Abstractions;

namespace Vism.Core.Tests;

/// <summary>The whole control path through the in-memory transport, as a user relies on it.</summary>
public sealed class EndToEndTests
{
    [Fact]
    public void TwoDevicesShareARegionByTokenAndSeeEachOthersWrites()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");

        AllocReply alloc = a.C.Alloc(64 * 1024);
        Assert.True(alloc.Ok);
        Assert.NotEqual(0UL, alloc.Token);

        AttachReply attach = b.C.Attach(alloc.Token);
        Assert.True(attach.Ok);

        "hello from a"u8.CopyTo(a.C.Region(alloc.Offset, 64));
        Assert.Equal("hello from a"u8.ToArray(), b.C.Region(attach.Offset, 12).ToArray());
        "reply from b"u8.CopyTo(b.C.Region(attach.Offset + 100, 64));
        Assert.Equal("reply from b"u8.ToArray(), a.C.Region(alloc.Offset + 100, 12).ToArray());
    }

    [Fact]
    public void DetachByBothDevicesFreesTheRegionAndItsMemory()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");
        AllocReply alloc = a.C.Alloc(Rig.MiB);
        AttachReply attach = b.C.Attach(alloc.Token);
        Assert.Equal(1, rig.Host.RegionCount);
        Assert.Equal(Rig.MiB, a.Memory.Usage.Used);

        Assert.Equal(IsmControl.AckOk, a.C.Detach(alloc.Offset));
        Assert.Equal(1, rig.Host.RegionCount);
        Assert.Equal(IsmControl.AckOk, b.C.Detach(attach.Offset));
        Assert.Equal(0, rig.Host.RegionCount);
        a.Settle();
        Assert.Equal(0UL, a.Memory.Usage.Used);
        Assert.Equal(IsmControl.AckErr, b.C.Attach(alloc.Token).Ack);
    }
}
