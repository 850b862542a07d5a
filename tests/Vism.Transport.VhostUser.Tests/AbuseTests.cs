using Vism.Native;
using Vism.Testing;
using Vism.VhostUser;

namespace Vism.Transport.VhostUser.Tests;

/// <summary>A misbehaving frontend gets errors, never crashes vism, never leaks an fd, and the
/// connection survives wherever the framing stays intact.</summary>
public sealed class AbuseTests
{
    private const ulong Page = 4096;

    /// <summary>Runs <paramref name="abuse"/> against a fresh backend and checks that every fd it
    /// caused vism to receive is closed again once the client is gone. It runs twice, each time on
    /// a fresh backend, and the second run is measured: descriptors the runtime opens once, lazily
    /// (the first time some code path runs in this process), are then already open, while a real
    /// leak shows again.</summary>
    private static async Task WithoutLeaks(Func<Backend, Task> abuse, VhostUserOptions? options = null)
    {
        for (int run = 0; run < 2; run++)
        {
            await using var b = new Backend(options);
            b.WaitFor(() => true, "the loop");
            int before = Fd.CountOpen();
            await abuse(b);
            b.WaitFor(() => !b.Transport.IsConnected, "the connection to close");
            if (run == 1)
                Descriptors.AssertBackTo(before, "after the abusive frontend left");
        }
    }

    [Fact]
    public Task AnUnknownRequestIsAnsweredWithAnErrorAndTheConnectionSurvives() => WithoutLeaks(b =>
    {
        using var c = new RawClient(b.SocketPath);
        c.NegotiateAll();
        Assert.NotEqual(0UL, c.Ack((FrontendRequest)99, [1, 2, 3]));
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetLogBase, new byte[16])); // known but not offered
        c.Send((FrontendRequest)77, new byte[40]);                              // no NEED_REPLY: no answer
        Assert.True(c.IsServed());
        Assert.Equal(3, b.Counters.Get("vhost-user.unknown-requests"));
        Assert.True(b.Log.Contains("unknown request 99"));
        return Task.CompletedTask;
    });

    [Fact]
    public Task WrongPayloadSizesAreRefusedAndTheConnectionSurvives() => WithoutLeaks(b =>
    {
        using var c = new RawClient(b.SocketPath);
        c.NegotiateAll();
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetFeatures, new byte[4]));
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetVringNum, new byte[12]));
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetOwner, new byte[8]));
        // A request with a typed reply answers a bad size with an empty reply (QEMU: an error).
        Assert.Empty(c.Call(FrontendRequest.GetVringBase, new byte[4]));
        Assert.Empty(c.Call(FrontendRequest.GetConfig, new byte[12 + 300]));
        Assert.Empty(c.Call(FrontendRequest.GetConfig, new ConfigHeader(0, 8, 0).Encode(new byte[4])));
        Assert.True(c.IsServed());
        Assert.Equal(6, b.Counters.Get("vhost-user.request-errors"));
        Assert.True(b.Log.Contains("takes a 8-byte payload, got 4"));
        return Task.CompletedTask;
    });

    [Fact]
    public Task FdsOnARequestThatTakesNoneAreClosed() => WithoutLeaks(b =>
    {
        using var c = new RawClient(b.SocketPath);
        c.NegotiateAll();
        int before = Fd.CountOpen();
        using (var a = MemFd.Create("x", Page))
        using (var e = EventFd.Create())
            Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetOwner, [], a, e.Handle, a));
        Assert.True(c.IsServed());
        Descriptors.AssertBackTo(before, "by the request that takes none"); // our copies closed, vism's copies closed
        Assert.Equal(3, b.Counters.Get("vhost-user.unexpected-fds"));
        // Too many fds for a request that takes one: all closed.
        using (var e1 = EventFd.Create())
        using (var e2 = EventFd.Create())
            Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetVringCall, U64Payload.ToBytes(0), e1.Handle, e2.Handle));
        Descriptors.AssertBackTo(before, "by the request with too many");
        return Task.CompletedTask;
    });

    [Fact]
    public Task RequestsNeedingAnUnnegotiatedProtocolFeatureAreRefused() => WithoutLeaks(b =>
    {
        using var c = new RawClient(b.SocketPath);
        Assert.Empty(c.Call(FrontendRequest.GetShmemConfig));
        Assert.Empty(c.Call(FrontendRequest.GetMaxMemSlots));
        Assert.True(b.Log.Contains("needs protocol feature SHMEM"));
        c.NegotiateAll();
        Assert.Equal(ShmemConfig.Size, c.Call(FrontendRequest.GetShmemConfig).Length);
        Assert.Equal(U64Payload.ToBytes(509), c.Call(FrontendRequest.GetMaxMemSlots));
        return Task.CompletedTask;
    });

    [Fact]
    public Task AMemoryTableWithOverlappingRegionsIsRefused() => WithoutLeaks(b =>
    {
        using var c = new RawClient(b.SocketPath);
        c.NegotiateAll();
        using var fd1 = MemFd.Create("a", 16 * Page);
        using var fd2 = MemFd.Create("b", 16 * Page);
        var overlapGpa = MemoryRegionDescriptor.EncodeTable([new(0x10000, 16 * Page, 0x7000_0000, 0), new(0x18000, 16 * Page, 0x9000_0000, 0)]);
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetMemTable, overlapGpa, fd1, fd2));
        var overlapUser = MemoryRegionDescriptor.EncodeTable([new(0x10000, 16 * Page, 0x7000_0000, 0), new(0x100000, 16 * Page, 0x7000_8000, 0)]);
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetMemTable, overlapUser, fd1, fd2));
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetMemTable, overlapUser, fd1)); // fewer fds than regions
        // ADD_MEM_REG of a region overlapping one already present.
        Assert.Equal(0UL, c.Ack(FrontendRequest.AddMemReg, new MemoryRegionDescriptor(0x10000, 16 * Page, 0x7000_0000, 0).EncodeSingle(), fd1));
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.AddMemReg, new MemoryRegionDescriptor(0x1f000, 16 * Page, 0x9000_0000, 0).EncodeSingle(), fd2));
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.RemMemReg, new MemoryRegionDescriptor(0x10000, 8 * Page, 0, 0).EncodeSingle()));
        Assert.Equal(0UL, c.Ack(FrontendRequest.RemMemReg, new MemoryRegionDescriptor(0x10000, 16 * Page, 0x7000_0000, 0).EncodeSingle()));
        Assert.True(b.Log.Contains("overlaps"));
        return Task.CompletedTask;
    });

    [Theory]
    [InlineData(0x10000UL, 1UL << 30, 0x7000_0000UL, 0UL, "ends past its file")]
    [InlineData(0x10000UL, 1UL << 62, 0x7000_0000UL, 0UL, "ends past its file")]
    [InlineData(ulong.MaxValue - 4095, 2 * Page, 0x7000_0000UL, 0UL, "wraps around")]
    [InlineData(0x10000UL, 2 * Page, ulong.MaxValue - 4095, 0UL, "wraps around")]
    [InlineData(0x10000UL, 2 * Page, 0x7000_0000UL, ulong.MaxValue - 4095, "beyond any file")]
    [InlineData(0x10000UL, 0UL, 0x7000_0000UL, 0UL, "size 0")]
    public Task HugeOrImpossibleMemoryRegionsAreRefused(ulong gpa, ulong size, ulong user, ulong offset, string reason) => WithoutLeaks(b =>
    {
        using var c = new RawClient(b.SocketPath);
        c.NegotiateAll();
        using var fd = MemFd.Create("small", 16 * Page);
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.AddMemReg, new MemoryRegionDescriptor(gpa, size, user, offset).EncodeSingle(), fd));
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetMemTable, MemoryRegionDescriptor.EncodeTable([new(gpa, size, user, offset)]), fd));
        Assert.True(b.Log.Contains(reason), $"no log line with '{reason}'");
        Assert.True(c.IsServed());
        return Task.CompletedTask;
    });

    [Fact]
    public Task ARegionFdThatIsNotAFileIsRefused() => WithoutLeaks(b =>
    {
        using var c = new RawClient(b.SocketPath);
        c.NegotiateAll();
        using var e = EventFd.Create();
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.AddMemReg, new MemoryRegionDescriptor(0, Page, 0x1000, 0).EncodeSingle(), e.Handle));
        Assert.True(b.Log.Contains("not a regular file"));
        return Task.CompletedTask;
    });

    [Fact]
    public Task RingAddressesOutsideMemoryAreRefused() => WithoutLeaks(b =>
    {
        using var c = new RawClient(b.SocketPath);
        c.NegotiateAll();
        using var ram = MemFd.Create("ram", 16 * Page);
        const ulong user = 0x7f00_0000_0000;
        Assert.Equal(0UL, c.Ack(FrontendRequest.AddMemReg, new MemoryRegionDescriptor(0x10000, 16 * Page, user, 0).EncodeSingle(), ram));
        Assert.Equal(0UL, c.Ack(FrontendRequest.SetVringNum, new VringState(0, 64).ToBytes()));
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetVringAddr, new VringAddress(0, 0, 0x1234, user + 0x2000, user + 0x1000, 0).ToBytes()));
        // The used ring starts inside memory but runs past its end.
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetVringAddr, new VringAddress(0, 0, user, user + 16 * Page - 8, user + 0x1000, 0).ToBytes()));
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetVringAddr, new VringAddress(0, 0, user + 8, user + 0x2000, user + 0x1000, 0).ToBytes())); // misaligned
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetVringAddr, new VringAddress(5, 0, user, user + 0x2000, user + 0x1000, 0).ToBytes())); // no such queue
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetVringNum, new VringState(0, 100).ToBytes())); // not a power of two
        Assert.Equal(0UL, c.Ack(FrontendRequest.SetVringAddr, new VringAddress(0, 0, user, user + 0x2000, user + 0x1000, 0).ToBytes()));
        Assert.True(b.Log.Contains("outside the memory table"));
        Assert.True(b.Log.Contains("is not in guest memory"));
        return Task.CompletedTask;
    });

    [Fact]
    public Task KickAndCallRequestsWithBadBitsOrMissingFdsAreRefused() => WithoutLeaks(b =>
    {
        using var c = new RawClient(b.SocketPath);
        c.NegotiateAll();
        using var e = EventFd.Create();
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetVringKick, U64Payload.ToBytes(0)));                  // no fd, no no-fd flag
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetVringKick, U64Payload.ToBytes(0x100)));              // polling: unsupported
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetVringCall, U64Payload.ToBytes(0x100), e.Handle));   // fd and no-fd flag
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetVringCall, U64Payload.ToBytes(0x1_0000), e.Handle)); // unknown bits
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetVringErr, U64Payload.ToBytes(9), e.Handle));        // no such queue
        Assert.Equal(0UL, c.Ack(FrontendRequest.SetVringCall, U64Payload.ToBytes(0x100)));                 // clearing is fine
        Assert.True(c.IsServed());
        return Task.CompletedTask;
    });

    [Fact]
    public Task StatusAndFeatureAbuseIsRefused() => WithoutLeaks(b =>
    {
        using var c = new RawClient(b.SocketPath);
        c.NegotiateAll();
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetFeatures, U64Payload.ToBytes(1UL << 50)));   // not offered
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetProtocolFeatures, U64Payload.ToBytes(1UL << 40)));
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetStatus, U64Payload.ToBytes(0x1ff)));
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetStatus, U64Payload.ToBytes(8)));             // FEATURES_OK before SET_FEATURES
        Assert.Equal(0UL, c.Ack(FrontendRequest.SetFeatures, U64Payload.ToBytes(1UL << 32)));
        Assert.Equal(0UL, c.Ack(FrontendRequest.SetStatus, U64Payload.ToBytes(0xb)));
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetStatus, U64Payload.ToBytes(1)));             // clears bits without reset
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetFeatures, U64Payload.ToBytes(0)));           // change after FEATURES_OK
        Assert.Equal(0UL, c.Ack(FrontendRequest.SetStatus, U64Payload.ToBytes(0)));
        Assert.Equal(U64Payload.ToBytes(0), c.Call(FrontendRequest.GetStatus));
        return Task.CompletedTask;
    });

    [Fact]
    public Task APayloadLargerThanAnyRequestClosesOnlyThatConnection() => WithoutLeaks(async b =>
    {
        using (var c = new RawClient(b.SocketPath))
        {
            c.Send(FrontendRequest.SetFeatures, new byte[RequestTable.MaxPayload + 1]);
            Assert.True(c.IsClosedByPeer());
        }
        Assert.Equal(1, b.Counters.Get("vhost-user.protocol-errors"));
        b.WaitFor(() => !b.Transport.IsConnected, "the connection to close");
        using var again = new RawClient(b.SocketPath);
        Assert.True(again.IsServed());
        await Task.CompletedTask;
    });

    [Fact]
    public Task AHeaderWithoutVersion1ClosesTheConnection() => WithoutLeaks(b =>
    {
        using var c = new RawClient(b.SocketPath);
        c.Send((uint)FrontendRequest.GetFeatures, 0x2, []);
        Assert.True(c.IsClosedByPeer());
        Assert.True(b.Log.Contains("version 1"));
        return Task.CompletedTask;
    });

    [Fact]
    public Task AReplyFlagOnARequestIsRefused() => WithoutLeaks(b =>
    {
        using var c = new RawClient(b.SocketPath);
        c.NegotiateAll();
        c.Send((uint)FrontendRequest.SetOwner, VhostUserConstants.ReplyFlags | VhostUserConstants.NeedReplyFlag, []);
        var reply = c.Read();
        Assert.NotNull(reply);
        Assert.NotEqual(0UL, U64Payload.TryRead(reply.Value.Payload, out ulong v) ? v : 0);
        Assert.True(c.IsServed());
        return Task.CompletedTask;
    });

    [Fact]
    public Task AFrontendThatDiesMidMessageLeavesNothingBehind() => WithoutLeaks(b =>
    {
        var c = new RawClient(b.SocketPath);
        c.NegotiateAll();
        using var fd = MemFd.Create("ram", 16 * Page);
        byte[] whole = Message.Build((uint)FrontendRequest.SetMemTable, VhostUserConstants.Version,
            MemoryRegionDescriptor.EncodeTable([new(0, 16 * Page, 0x7000_0000, 0)]));
        c.Socket.Send(whole.AsSpan(0, 20), [fd]); // header and part of the payload, with the fd
        c.Dispose();
        b.WaitFor(() => b.Device.DisconnectCount == 1, "the device to see the disconnect");
        using var again = new RawClient(b.SocketPath);
        Assert.True(again.IsServed());
        return Task.CompletedTask;
    });

    [Fact]
    public Task ASecondFrontendIsRefusedWhileOneIsConnected() => WithoutLeaks(b =>
    {
        using var first = new RawClient(b.SocketPath);
        Assert.True(first.IsServed());
        using (var second = new RawClient(b.SocketPath))
            Assert.True(second.IsClosedByPeer());
        Assert.Equal(1, b.Counters.Get("vhost-user.rejected-connections"));
        Assert.True(first.IsServed());
        return Task.CompletedTask;
    });
}
