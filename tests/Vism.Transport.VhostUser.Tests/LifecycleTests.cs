using System.Diagnostics;
using Vism.Abstractions;
using Vism.Driver;
using Vism.Driver.VhostUser;
using Vism.Native;
using Vism.Testing;
using Vism.VhostUser;

namespace Vism.Transport.VhostUser.Tests;

/// <summary>Connections come and go; the device and the process stay clean.</summary>
public sealed class LifecycleTests
{
    [Fact]
    public async Task ADisconnectReleasesEverythingAndTheSocketIsServedAgain()
    {
        await using var b = new Backend();
        int baseline = Fd.CountOpen();
        using (var ram = new GuestRam())
        using (VhostUserFrontend f = b.Connect(ram))
        {
            FrontendTests.Probe(f);
            b.WaitFor(() => b.Services.CanMap, "CanMap after start");
            using var block = new TestBlock(1 << 20);
            Assert.Null(b.Map(ShmId.Regions, 0, block, 1 << 20, writable: true));
        }
        b.WaitFor(() => b.Device.DisconnectCount == 1 && !b.Transport.IsConnected, "the disconnect");
        Assert.Null(b.On(() => b.Device.Services));
        Assert.Equal(DeviceStatus.Reset, b.On(() => b.Device.Status));
        Descriptors.AssertBackTo(baseline, "after the disconnect");

        // The next frontend (QEMU reconnect=) gets a clean device.
        using (var ram = new GuestRam())
        using (VhostUserFrontend f = b.Connect(ram))
        {
            FrontendTests.Probe(f);
            b.WaitFor(() => b.Device.Status == FrontendTests.Running, "DRIVER_OK on the second connection");
            f.Kick(0);
            Assert.True(f.WaitQueue(0, TimeSpan.FromSeconds(20)));
        }
        b.WaitFor(() => b.Device.DisconnectCount == 2, "the second disconnect");
        Descriptors.AssertBackTo(baseline, "after the second disconnect");
    }

    [Fact]
    public async Task AMapWaitingForItsReplyFailsCleanlyWhenTheFrontendDisappears()
    {
        await using var b = new Backend();
        using var c = new RawClient(b.SocketPath);
        (UnixSocket ours, UnixSocket theirs) = UnixSocket.Pair();
        using (ours)
        {
            StartWithBackendChannel(b, c, theirs);
            using var block = new TestBlock(1 << 20);
            ITransportServices services = b.Services;
            Task<string?> map = b.Loop.InvokeAsync(() => services.MapAsync(ShmId.Regions, 0, block, 1 << 20, true).AsTask());
            // Both the NOTIFY map of the start and this one wait for replies that never come.
            b.WaitFor(() => b.Transport.Session?.Backend?.Outstanding == 2, "two outstanding maps");
            c.Dispose();
            string? error = await map.WaitAsync(TimeSpan.FromSeconds(20));
            Assert.Equal("the connection closed", error);
            b.WaitFor(() => !b.Transport.IsConnected, "the disconnect");
        }
    }

    [Fact]
    public async Task TheMainSocketIsServedWhileAMapReplyIsOutstanding()
    {
        await using var b = new Backend();
        using var c = new RawClient(b.SocketPath);
        (UnixSocket ours, UnixSocket theirs) = UnixSocket.Pair();
        using (ours)
        using (var channel = new MessageFramer(ours, 64))
        {
            StartWithBackendChannel(b, c, theirs);
            // The NOTIFY window map sent at start is waiting for our reply; answer it.
            Assert.True(ours.WaitReadable(20_000));
            Assert.Equal(ReadStatus.Message, channel.TryRead());
            Assert.Equal((uint)BackendRequest.ShmemMap, channel.Header.Request);
            ours.Send(Message.BuildU64(channel.Header.Request, VhostUserConstants.ReplyFlags, 0));

            using var block = new TestBlock(1 << 20);
            Task<string?> map = b.Loop.InvokeAsync(() => b.Services.MapAsync(ShmId.Regions, 0, block, 1 << 20, true).AsTask());
            Assert.True(ours.WaitReadable(20_000));
            Assert.Equal(ReadStatus.Message, channel.TryRead());
            Assert.Equal((uint)BackendRequest.ShmemMap, channel.Header.Request);
            Assert.True(channel.Header.NeedsReply);
            Assert.True(ShmemMapPayload.TryRead(channel.Payload, out ShmemMapPayload m));
            Assert.Equal(new ShmemMapPayload(1, 0, 0, 1 << 20, 1), m);
            Assert.Single(channel.Fds);
            Assert.False(map.IsCompleted);

            // Like QEMU answering a SHMEM_MAP with ADD_MEM_REG first: the main socket is served meanwhile.
            using var more = MemFd.Create("more", 1 << 20);
            Assert.Equal(0UL, c.Ack(FrontendRequest.AddMemReg, new MemoryRegionDescriptor(0x8000_0000, 1 << 20, 0x6000_0000, 0).EncodeSingle(), more));
            Assert.True(c.IsServed());
            Assert.False(map.IsCompleted);

            ours.Send(Message.BuildU64((uint)BackendRequest.ShmemMap, VhostUserConstants.ReplyFlags, 0));
            Assert.Null(await map.WaitAsync(TimeSpan.FromSeconds(20)));
        }
    }

    [Fact]
    public async Task AFrontendThatNeverAnswersAMapFailsItAndKeepsTheConnection()
    {
        await using var b = new Backend(new VhostUserOptions { BackendReplyTimeoutMs = 200 });
        using var c = new RawClient(b.SocketPath);
        (UnixSocket ours, UnixSocket theirs) = UnixSocket.Pair();
        using (ours)
        {
            StartWithBackendChannel(b, c, theirs);
            b.WaitFor(() => b.Counters.Get("vhost-user.backend-channel-errors") == 1, "the reply timeout");
            Assert.True(b.Log.Contains("no reply to ShmemMap"));
            using var block = new TestBlock(1 << 20);
            string? error = b.Map(ShmId.Regions, 0, block, 1 << 20, true);
            Assert.Contains("backend channel", error);
            Assert.True(c.IsServed());
        }
    }

    /// <summary>Plays QEMU's start with a raw client whose backend channel the test answers by hand.</summary>
    private static void StartWithBackendChannel(Backend b, RawClient c, UnixSocket theirs)
    {
        c.NegotiateAll();
        Assert.Equal(0UL, c.Ack(FrontendRequest.SetBackendReqFd, [], theirs.Handle));
        theirs.Dispose();
        Assert.Equal(0UL, c.Ack(FrontendRequest.SetFeatures, U64Payload.ToBytes((1UL << 32) | (1UL << 30))));
        Assert.Equal(0UL, c.Ack(FrontendRequest.SetStatus, U64Payload.ToBytes((ulong)FrontendTests.Running)));
        b.WaitFor(() => b.Device.Status == FrontendTests.Running && b.Services.CanMap, "the start");
    }

    [Fact]
    public async Task WindowsThatDoNotAddUpToAPowerOfTwoAreRefusedAtStart()
    {
        using var loop = new EventLoop("layout");
        using var dir = new TempDir("vu");
        var device = new FakeVirtioDevice(loop, regionsWindow: 3 << 20, notifyWindow: 2 << 20);
        var host = new HostDescription { Gid = 1, StateDirectory = dir.Path, SocketDirectory = dir.Path };
        await using var t = new VhostUserTransport(new VhostUserOptions(), device.Description, host, loop, new TestCounters(), new ListLogger<VhostUserTransport>());
        var ex = await Assert.ThrowsAsync<InvalidOperationException>(() => loop.InvokeAsync(() => t.Start(device)));
        Assert.Contains("power of two", ex.Message);
        Assert.False(File.Exists(t.Endpoint));
    }

    [Fact]
    public async Task AThousandDevicesOnTwoLoopsServeARequestEach()
    {
        const int devices = 1000;
        Fd.RaiseOpenFileLimit();
        using var pool = new LoopPool(2);
        using var dir = new TempDir("vu1k");
        int threadsBefore = Process.GetCurrentProcess().Threads.Count;
        var backends = new List<Backend>(devices);
        var clients = new List<RawClient>(devices);
        try
        {
            for (int i = 0; i < devices; i++)
                backends.Add(new Backend(loop: pool.Next(), dir: dir, name: $"d{i}"));
            foreach (Backend b in backends) clients.Add(new RawClient(b.SocketPath));
            foreach (RawClient c in clients) c.Send(FrontendRequest.GetFeatures, []);
            int answered = 0;
            foreach (RawClient c in clients)
                if (c.Read(20_000) is { } r && r.Header.Request == (uint)FrontendRequest.GetFeatures && r.Payload.Length == 8) answered++;
            Assert.Equal(devices, answered);
            Assert.All(backends, b => Assert.True(b.Transport.IsConnected));
            int threadsAfter = Process.GetCurrentProcess().Threads.Count;
            Assert.True(threadsAfter - threadsBefore < 16, $"{threadsAfter - threadsBefore} threads added for {devices} connected devices");
        }
        finally
        {
            foreach (RawClient c in clients) c.Dispose();
            foreach (Backend b in backends) await b.DisposeAsync();
        }
    }
}
