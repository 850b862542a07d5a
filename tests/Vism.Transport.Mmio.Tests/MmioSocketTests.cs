using Vism.Abstractions;
using Vism.Driver;
using Vism.Driver.Mmio;
using Vism.Mmio;
using R = Vism.Mmio.MmioRegister;

namespace Vism.Transport.Mmio.Tests;

/// <summary>The socket transport and the Driver's MMIO client, over a real socket, against the device test double.</summary>
public sealed class MmioSocketTests
{
    private static readonly TimeSpan Generous = TimeSpan.FromSeconds(20);

    private static void Initialise(MmioVmmClient client, ulong features)
    {
        client.WriteStatus(DeviceStatus.Reset);
        client.WriteStatus(DeviceStatus.Acknowledge);
        client.WriteStatus(DeviceStatus.Acknowledge | DeviceStatus.Driver);
        Assert.Equal(features, client.ReadDeviceFeatures() & features);
        client.WriteDriverFeatures(features);
        client.WriteStatus(DeviceStatus.Acknowledge | DeviceStatus.Driver | DeviceStatus.FeaturesOk);
        Assert.Equal(DeviceStatus.Acknowledge | DeviceStatus.Driver | DeviceStatus.FeaturesOk, client.ReadStatus());
    }

    private static QueueSettings RingsIn(GuestRam ram, ushort size)
    {
        ulong desc = ram.Allocate(16UL * size, 16);
        ulong avail = ram.Allocate(6 + 2UL * size, 2);
        ulong used = ram.Allocate(6 + 8UL * size, 4);
        return new QueueSettings(size, desc, avail, used);
    }

    [Fact]
    public async Task ConnectingProbesTheDeviceAndPlacesItsSharedMemoryWindows()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using MmioVmmClient client = h.Connect();

        Assert.Equal(Virtio.IsmDeviceId, client.DeviceId);
        Assert.Equal(0x200u, client.Hello.WindowSize);
        Assert.Equal(MmioTestDevice.RegionsLength, client.ShmLength(ShmId.Regions));
        Assert.Equal(MmioTestDevice.NotifyLength, client.ShmLength(ShmId.Notify));
        Assert.Equal(0ul, client.ShmLength(ShmId.Undefined));
        Assert.Equal(client.RegionsBase, client.ShmBase(ShmId.Regions));
        Assert.Equal(client.NotifyBase, client.ShmBase(ShmId.Notify));
        Assert.True(client.RegionsBase >= client.Ram.GuestBase + client.Ram.Size, "windows do not overlap RAM");
        Assert.Equal(1, await h.OnLoop(() => h.Device.ConnectCount));
    }

    [Fact]
    public async Task AVmmOfAnotherProtocolVersionIsRefusedWithAClearErrorOnBothSides()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();

        var ex = Assert.Throws<DriverTransportException>(() => h.Connect(new MmioVmmOptions { ProtocolVersion = 2 }));

        Assert.Contains("version mismatch", ex.Message);
        Assert.Contains("speaks version 2", ex.Message);
        Assert.Contains("device speaks version 1", ex.Message);
        await h.WaitUntil(() => h.Counters.Get("mmio.vmm.version_mismatch") == 1, "the device counted the mismatch");
        Assert.True(h.Log.Contains("speaks MMIO protocol version 2"));
        Assert.Equal(0, await h.OnLoop(() => h.Device.ConnectCount));
        // The socket is served again.
        using MmioVmmClient good = h.Connect();
        Assert.Equal(Virtio.IsmDeviceId, good.DeviceId);
    }

    [Fact]
    public async Task ASecondVmmIsTurnedAwayWhileOneIsAttached()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using MmioVmmClient first = h.Connect();

        var ex = Assert.Throws<DriverTransportException>(() => h.Connect());

        Assert.Contains("Busy", ex.Message);
        Assert.Equal(Virtio.IsmDeviceId, first.ReadRegister(R.DeviceId));
        Assert.Equal(1, h.Counters.Get("mmio.vmm.rejected"));
    }

    [Fact]
    public async Task QueueSetUpOverTheSocketStartsTheQueueWithRingsInGuestRam()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using MmioVmmClient client = h.Connect();
        Initialise(client, Features.Mask(Features.Version1));
        QueueSettings rings = RingsIn(client.Ram, 64);

        Assert.Equal(256, client.MaxQueueSize(0));
        client.StartQueue(0, rings);
        client.WriteStatus(DeviceStatus.Acknowledge | DeviceStatus.Driver | DeviceStatus.FeaturesOk | DeviceStatus.DriverOk);

        var started = Assert.Single(await h.OnLoop(() => h.Device.StartedQueues.ToArray()));
        Assert.Equal((0, rings), started);
        Assert.Equal(DeviceStatus.DriverOk, client.ReadStatus() & DeviceStatus.DriverOk);
    }

    [Fact]
    public async Task RingsOutsideGuestRamAreRefusedAndTheQueueStaysDown()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using MmioVmmClient client = h.Connect();
        Initialise(client, Features.Mask(Features.Version1));
        ulong end = client.Ram.GuestBase + client.Ram.Size;

        var ex = Assert.Throws<DriverTransportException>(() => client.StartQueue(0, new QueueSettings(64, end - 512, end - 1024, end - 2048)));

        Assert.Contains("refused queue 0", ex.Message);
        client.WriteRegister(R.QueueSel, 0);
        Assert.Equal(0u, client.ReadRegister(R.QueueReady));
        Assert.Empty(await h.OnLoop(() => h.Device.StartedQueues.ToArray()));
    }

    [Fact]
    public async Task AKickReachesTheDeviceAndItsUsedBufferInterruptWakesTheDriver()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using MmioVmmClient client = h.Connect();
        Initialise(client, Features.Mask(Features.Version1));
        client.StartQueue(0, RingsIn(client.Ram, 64));
        await h.OnLoop(() => h.Device.OnKick = q => h.Services.SignalQueue(q));

        client.Kick(0);

        Assert.True(client.WaitQueue(0, Generous), "the used-buffer interrupt arrived");
        Assert.Equal(new[] { 0 }, await h.OnLoop(() => h.Device.Kicks.ToArray()));
        // The interrupt handler reads InterruptStatus and acknowledges it, as virtio_mmio does (the
        // waiter may have been woken before that round trip finished).
        await h.WaitUntil(() => h.Transport.Session!.Registers.InterruptStatus == 0, "the VMM acknowledged the interrupt");
        Assert.Equal(0u, client.ReadRegister(R.InterruptStatus));
    }

    [Fact]
    public async Task ASleepingQueueWaiterWakesOnTheLineBeforeInterruptStatusIsRead()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using MmioVmmClient client = h.Connect();
        Initialise(client, Features.Mask(Features.Version1));
        client.StartQueue(0, RingsIn(client.Ram, 64));
        Task<bool> waiting = Task.Run(() => client.WaitQueue(0, Generous));
        await Task.Delay(20);

        // The device raises the line and then keeps its loop busy: the READ of InterruptStatus the
        // VMM's interrupt handler sends cannot be answered until the loop is released.
        using var release = new ManualResetEventSlim();
        Task busy = h.OnLoop(() => { h.Services.SignalQueue(0); release.Wait(Generous); });
        try
        {
            Assert.True(await waiting.WaitAsync(TimeSpan.FromSeconds(10)), "the waiter woke on the line itself");
        }
        finally
        {
            release.Set();
            await busy;
        }
        await h.WaitUntil(() => h.Transport.Session!.Registers.InterruptStatus == 0, "the VMM acknowledged the interrupt afterwards");
    }

    [Fact]
    public async Task AConfigChangeSetsItsInterruptBitUntilAcknowledged()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using MmioVmmClient client = h.Connect(new MmioVmmOptions());
        await h.OnLoop(() => h.Transport.Session!.Registers.SignalConfigChange());
        await h.WaitUntil(() => h.Transport.Session!.Registers.InterruptStatus == 0, "the VMM acknowledged the interrupt");
        Assert.False(client.WaitQueue(0, TimeSpan.Zero), "a config change is not a used-buffer notification");
    }

    [Fact]
    public async Task NotifyMessagesReachTheDeviceExactlyAndInOrder()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using MmioVmmClient client = h.Connect(new MmioVmmOptions { NotifyDoorbells = false });

        client.WriteNotify(0);
        client.WriteNotify(3);
        Assert.Equal(MmioStatus.Ok, client.TryWriteNotify(7));
        Assert.Equal(MmioStatus.BadAccess, client.TryWriteNotify(MmioTestDevice.NotifyLength));

        Assert.Equal(new[] { 0ul, 3ul, 7ul }, await h.OnLoop(() => h.Device.NotifyWrites.ToArray()));
        Assert.Equal(0, client.DoorbellCount);
    }

    [Fact]
    public async Task NotifyWritesRingOneDoorbellPerOffsetAndEachReachesTheDevice()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using MmioVmmClient client = h.Connect();

        client.WriteNotify(0);
        await h.WaitUntil(() => h.Device.NotifyWrites.Count == 1, "the first doorbell was read");
        client.WriteNotify(3);
        await h.WaitUntil(() => h.Device.NotifyWrites.Count == 2, "the second doorbell was read");
        client.WriteNotify(0);
        await h.WaitUntil(() => h.Device.NotifyWrites.Count == 3, "the first doorbell was read again");

        Assert.Equal(new[] { 0ul, 3ul, 0ul }, await h.OnLoop(() => h.Device.NotifyWrites.ToArray()));
        Assert.Equal(2, client.DoorbellCount);
        // A write past the region slots cannot have a doorbell: it travels as NOTIFY and the window
        // rejects it as before.
        client.WriteNotify(MmioTestDevice.NotifyLength);
        await h.WaitUntil(() => h.Counters.Get("mmio.notify.rejected") == 1, "the out-of-window write was rejected");
        Assert.Equal(2, client.DoorbellCount);
    }

    [Fact]
    public async Task PerRegionVectorsFireTheEventfdTheVmmGave()
    {
        await using MmioHarness h = await MmioHarness.StartAsync(new MmioOptions { Vectors = 4 });
        using MmioVmmClient client = h.Connect();
        Assert.Equal(4, client.VectorCount);

        await h.OnLoop(() => h.Services.SignalVector(3));
        await h.OnLoop(() => h.Services.SignalVector(9));

        Assert.True(client.WaitVector(3, Generous));
        Assert.False(client.WaitVector(3, TimeSpan.FromMilliseconds(50)), "one firing is consumed once");
        Assert.Equal(1, h.Counters.Get("mmio.irq.bad_vector"));
    }

    [Fact]
    public async Task AVectorWaiterSpinningOnItsEventfdGetsEachFiringOnce()
    {
        await using MmioHarness h = await MmioHarness.StartAsync(new MmioOptions { Vectors = 2 });
        using MmioVmmClient client = h.Connect();

        // Three firings land in the eventfd before anyone waits: the counter holds 3, and the
        // waiter, which reads the eventfd itself, returns them one by one.
        await h.OnLoop(() => { h.Services.SignalVector(1); h.Services.SignalVector(1); h.Services.SignalVector(1); });

        TimeSpan spin = TimeSpan.FromMilliseconds(5);
        for (int i = 0; i < 3; i++)
            Assert.True(client.WaitVector(1, Generous, spin), $"firing {i + 1} of 3");
        Assert.False(client.WaitVector(1, TimeSpan.FromMilliseconds(50), spin), "three firings, three returns");
        Assert.False(client.WaitVector(0, TimeSpan.Zero, spin), "vector 0 never fired");

        Task<bool> waiting = Task.Run(() => client.WaitVector(0, Generous, spin));
        await Task.Delay(20);
        await h.OnLoop(() => h.Services.SignalVector(0));
        Assert.True(await waiting.WaitAsync(Generous));
    }

    [Fact]
    public async Task AVectorWaiterLearnsAtOnceThatTheDeviceWentAway()
    {
        MmioHarness h = await MmioHarness.StartAsync(new MmioOptions { Vectors = 1 });
        using MmioVmmClient client = h.Connect();
        Task<bool> waiting = Task.Run(() => client.WaitVector(0, TimeSpan.FromMinutes(5)));
        await Task.Delay(50);

        await h.DisposeAsync(); // the device closes the connection

        var ex = await Assert.ThrowsAsync<DriverTransportException>(() => waiting.WaitAsync(Generous));
        Assert.Contains("closed", ex.Message); // long before its five-minute timeout
    }

    [Fact]
    public async Task AMapRequestPutsRegionMemoryIntoTheVmmsWindowAndUnmapTakesItAway()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using MmioVmmClient client = h.Connect();
        using var block = new MemfdBlock(64 * 1024);
        using var deviceView = Vism.Native.Mapping.Map(block.Handle, 0, block.Length);
        deviceView.Span(0, 5).Fill(0x5a);

        string? failure = await h.Map(ShmId.Regions, 0x20000, block, block.Length, writable: true);

        Assert.Null(failure);
        Assert.Equal(1, client.MappingCount);
        unsafe
        {
            var guest = new Span<byte>((void*)(client.ShmAddress(ShmId.Regions) + 0x20000), 64 * 1024);
            Assert.Equal(0x5a, guest[4]);
            guest[100] = 0xa5; // the guest writes, the device sees it
        }
        Assert.Equal(0xa5, deviceView.Span(100, 1)[0]);

        Assert.Null(await h.Unmap(ShmId.Regions, 0x20000, block.Length));
        Assert.Equal(0, client.MappingCount);
    }

    [Theory]
    [InlineData(ShmId.Notify, 0x0ul, 0x10000ul)]          // the NOTIFY window is trapped, never mapped
    [InlineData(ShmId.Undefined, 0x0ul, 0x10000ul)]       // a window the device lacks
    [InlineData(ShmId.Regions, 0x100ul, 0x10000ul)]       // unaligned
    [InlineData(ShmId.Regions, 0xf8000ul, 0x10000ul)]     // runs past the window
    [InlineData(ShmId.Regions, 0x0ul, 0x20000ul)]         // longer than the block
    public async Task MapRequestsThatCannotBeRightAreRefusedWithoutAskingTheVmm(ShmId id, ulong offset, ulong length)
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using MmioVmmClient client = h.Connect();
        using var block = new MemfdBlock(0x10000);

        string? failure = await h.Map(id, offset, block, length, true);

        Assert.NotNull(failure);
        Assert.Equal(0, client.MapRequests);
        Assert.Equal(1, h.Counters.Get("mmio.map.failed"));
    }

    [Fact]
    public async Task OverlappingMappingsAreRefused()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using MmioVmmClient client = h.Connect();
        using var a = new MemfdBlock(0x10000);
        using var b = new MemfdBlock(0x10000);
        Assert.Null(await h.Map(ShmId.Regions, 0x10000, a, 0x10000, true));
        Assert.NotNull(await h.Map(ShmId.Regions, 0x18000, b, 0x10000, true));
        Assert.Equal(1, client.MapRequests);
    }

    [Fact]
    public async Task AResetByTheDriverDropsEveryMappingTheVmmHolds()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using MmioVmmClient client = h.Connect();
        using var a = new MemfdBlock(0x10000);
        using var b = new MemfdBlock(0x10000);
        Assert.Null(await h.Map(ShmId.Regions, 0, a, 0x10000, true));
        Assert.Null(await h.Map(ShmId.Regions, 0x10000, b, 0x10000, false));
        Assert.Equal(2, client.MappingCount);

        client.WriteStatus(DeviceStatus.Reset);
        client.ReadStatus(); // the device sent its UNMAPs before this reply

        Assert.Equal(0, client.MappingCount);
        Assert.Equal(0, await h.OnLoop(() => h.Transport.Session!.MappingCount));
    }

    [Fact]
    public async Task AVmmThatLeavesDisconnectsTheDeviceAndTheSocketIsServedAgain()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using (MmioVmmClient client = h.Connect())
        {
            Initialise(client, Features.Mask(Features.Version1));
            client.StartQueue(0, RingsIn(client.Ram, 64));
        }
        await h.WaitUntil(() => h.Device.DisconnectCount == 1, "the device saw the VMM leave");
        Assert.Equal(DeviceStatus.Reset, await h.OnLoop(() => h.Device.Status));
        Assert.False(await h.OnLoop(() => h.Transport.HasVmm));

        using MmioVmmClient again = h.Connect();
        Assert.Equal(2, await h.OnLoop(() => h.Device.ConnectCount));
        again.WriteRegister(R.QueueSel, 0);
        Assert.Equal(0u, again.ReadRegister(R.QueueReady));
    }

    [Fact]
    public async Task AMapInFlightWhenTheVmmLeavesFailsAndTheDeviceIsReleased()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using RawVmm peer = await h.ConnectRawAsync();
        using var block = new MemfdBlock(0x10000);
        Task<string?> map = h.Map(ShmId.Regions, 0, block, 0x10000, true);
        var (request, _) = peer.Receive();
        Assert.Equal(MmioMessageType.Map, request.Type);

        peer.Dispose(); // leaves without answering

        Assert.Contains("disconnected", await map ?? "");
        await h.WaitUntil(() => h.Device.DisconnectCount == 1, "the device saw the VMM leave");
    }

    [Fact]
    public async Task RegisterAccessesAreServedWhileAMapAwaitsTheVmmsAnswer()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using RawVmm peer = await h.ConnectRawAsync();
        using var block = new MemfdBlock(0x10000);
        Task<string?> map = h.Map(ShmId.Regions, 0, block, 0x10000);
        var fds = new List<Microsoft.Win32.SafeHandles.SafeFileHandle>();
        var (request, payload) = peer.Receive(fds);
        Assert.Equal(MmioMessageType.Map, request.Type);
        Assert.True(WindowMapping.TryDecode(payload, out WindowMapping m));
        Assert.Equal(new WindowMapping(ShmId.Regions, true, 0, 0, 0x10000), m);
        Assert.Single(fds);
        fds[0].Dispose();

        // The MAP is unanswered; the device's loop still answers the guest's register accesses.
        var (reply, value) = peer.Call(MmioMessageType.Read, new RegisterAccess(R.DeviceId, 4, 0).Encode());
        Assert.Equal(MmioStatus.Ok, reply.Status);
        Assert.Equal(Virtio.IsmDeviceId, (uint)BitConverter.ToUInt64(value));
        Assert.False(map.IsCompleted);

        peer.SendRaw(MmioFrame.Build(MmioMessageType.Map, MmioMessageFlags.Reply, request.Id, []));
        Assert.Null(await map);
    }

    [Fact]
    public async Task AVmmThatDoesNotAnswerAMapInTimeIsDisconnected()
    {
        await using MmioHarness h = await MmioHarness.StartAsync(new MmioOptions { MapTimeoutMs = 200 });
        using RawVmm peer = await h.ConnectRawAsync();
        using var block = new MemfdBlock(0x10000);

        string? failure = await h.Map(ShmId.Regions, 0, block, 0x10000, true);

        Assert.Contains("did not answer", failure ?? "");
        await h.WaitUntil(() => h.Device.DisconnectCount == 1, "the silent VMM was disconnected");
        Assert.True(h.Log.Contains("did not answer Map"));
    }
}
