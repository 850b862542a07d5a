using System.Runtime.InteropServices;
using System.Buffers.Binary;
using Vism.Abstractions;
using Vism.Driver;
using Vism.Driver.VhostUser;
using Vism.Native;
using Vism.VhostUser;

namespace Vism.Transport.VhostUser.Tests;

/// <summary>The Driver's frontend against the backend over a real socket, with a device double.</summary>
public sealed class FrontendTests
{
    internal const DeviceStatus Running = DeviceStatus.Acknowledge | DeviceStatus.Driver | DeviceStatus.FeaturesOk | DeviceStatus.DriverOk;

    /// <summary>What a virtio driver does: reset, acknowledge, negotiate, set up rings, DRIVER_OK.</summary>
    internal static QueueSettings[] Probe(IDriverTransport t, int queues = 1, ushort size = 64)
    {
        t.WriteStatus(DeviceStatus.Reset);
        t.WriteStatus(DeviceStatus.Acknowledge);
        t.WriteStatus(DeviceStatus.Acknowledge | DeviceStatus.Driver);
        t.WriteDriverFeatures(t.ReadDeviceFeatures() & Features.Mask(Features.Version1, Features.IsmEventIrq));
        t.WriteStatus(DeviceStatus.Acknowledge | DeviceStatus.Driver | DeviceStatus.FeaturesOk);
        Assert.True(t.ReadStatus().HasFlag(DeviceStatus.FeaturesOk));
        var rings = new QueueSettings[queues];
        for (int i = 0; i < queues; i++)
        {
            ulong desc = t.Ram.Allocate(16UL * size, 16);
            ulong avail = t.Ram.Allocate(6 + 2UL * size, 2);
            ulong used = t.Ram.Allocate(6 + 8UL * size, 4);
            rings[i] = new QueueSettings(size, desc, avail, used);
            t.StartQueue(i, rings[i]);
        }
        t.WriteStatus(Running);
        return rings;
    }

    [Fact]
    public async Task HandshakeNegotiatesWhatQemuAcksAndReportsTheWindows()
    {
        await using var c = Connected.Open();
        (Backend b, VhostUserFrontend f) = (c.B, c.F);
        Assert.Equal(VhostUserFrontendOptions.QemuProtocolFeatures, f.ProtocolFeatures);
        Assert.Equal(1 + VhostUserOptions.DefaultEventVectors, f.QueueCount); // the fake device offers EVENT_IRQ: 4 vector queues by default
        Assert.Equal(509UL, f.MaxMemSlots);
        Assert.Equal(2UL << 20, f.ShmLength(ShmId.Regions));
        Assert.Equal(2UL << 20, f.ShmLength(ShmId.Notify));
        Assert.Equal(b.Device.DeviceFeatures, f.ReadDeviceFeatures());
        Assert.Equal(1, b.On(() => b.Device.ConnectCount));
        Assert.True(b.On(() => b.Transport.IsConnected));
    }

    [Theory]
    [InlineData(false)] // QEMU 11.1.3: the running controlq is the start
    [InlineData(true)]  // a frontend that also sends SET_STATUS(DRIVER_OK) at the end
    public async Task DriverOkStartsTheDeviceWithGuestPhysicalRingAddresses(bool sendStatus)
    {
        await using var b = new Backend();
        using var ram = new GuestRam();
        using VhostUserFrontend f = b.Connect(ram, new VhostUserFrontendOptions { SendStartStopStatus = sendStatus });
        QueueSettings[] rings = Probe(f);
        b.WaitFor(() => b.Device.Status == Running, "DRIVER_OK");
        (int index, QueueSettings started) = Assert.Single(b.Device.StartedQueues);
        Assert.Equal(0, index);
        Assert.Equal(rings[0], started);
        // QEMU's first SET_STATUS says FEATURES_OK alone: ACKNOWLEDGE and DRIVER were added in driver order.
        Assert.Equal([DeviceStatus.Acknowledge, DeviceStatus.Acknowledge | DeviceStatus.Driver,
            DeviceStatus.Acknowledge | DeviceStatus.Driver | DeviceStatus.FeaturesOk, Running], b.Device.StatusHistory.ToArray());
        Assert.Equal(Features.Mask(Features.Version1, Features.IsmEventIrq), b.Device.DriverFeatures);
        Assert.Equal(0, b.Counters.Get("vhost-user.request-errors"));
    }

    [Fact]
    public async Task WithoutTheStatusFeatureTheRunningControlqBringsTheDeviceToDriverOk()
    {
        await using var b = new Backend();
        using var ram = new GuestRam();
        var options = new VhostUserFrontendOptions { ProtocolFeatures = VhostUserFrontendOptions.QemuProtocolFeatures & ~(1UL << ProtocolFeature.Status) };
        using VhostUserFrontend f = b.Connect(ram, options);
        Probe(f);
        b.WaitFor(() => b.Device.Status == Running, "DRIVER_OK synthesised from the controlq");
        Assert.Equal(4, b.Device.StatusHistory.Count);
        b.WaitFor(() => f.MappingCount(ShmId.Notify) == 1, "the NOTIFY window mapped at start");
    }

    [Fact]
    public async Task AKickReachesTheDeviceAndItsSignalReachesTheCallFd()
    {
        await using var c = Connected.Open(start: true);
        (Backend b, VhostUserFrontend f) = (c.B, c.F);
        b.WaitFor(() => b.Device.Status == Running, "DRIVER_OK");
        f.Kick(0);
        Assert.True(f.WaitQueue(0, TimeSpan.FromSeconds(20)), "the device's SignalQueue did not reach the call fd");
        Assert.Equal(1, b.On(() => b.Device.Kicks.Count));
    }

    [Fact]
    public async Task ConfigSpaceIsReadThroughGetConfigAtAnyWidth()
    {
        await using var c = Connected.Open();
        (Backend b, VhostUserFrontend f) = (c.B, c.F);
        var all = new byte[32];
        f.ReadConfig(0, all);
        Assert.Equal(b.Device.ConfigBytes.ToArray(), all);
        var odd = new byte[7];
        f.ReadConfig(17, odd);
        Assert.Equal(b.Device.ConfigBytes.Slice(17, 7).ToArray(), odd);
        Assert.Throws<DriverTransportException>(() => f.ReadConfig(30, new byte[4]));
    }

    [Fact]
    public async Task ANotifySlotWriteReachesTheDeviceOnce()
    {
        await using var c = Connected.Open(start: true);
        (Backend b, VhostUserFrontend f) = (c.B, c.F);
        b.WaitFor(() => f.MappingCount(ShmId.Notify) == 1, "the NOTIFY window mapped at start");
        b.On(() => b.Device.SlotsInUse = 4);
        f.Kick(0); // activity re-arms the poller
        f.WriteNotify(2 * 8);
        b.WaitFor(() => !b.Device.NotifyWrites.IsEmpty, "the notify write to be reported");
        Thread.Sleep(100);
        Assert.Equal([16UL], b.Device.NotifyWrites.ToArray());
        Assert.Equal(1, b.Counters.Get("vhost-user.notify-writes"));
    }

    [Fact]
    public async Task NotifyChangesTheSlotAndRingsTheDoorbellSoTheDeviceScansAtOnce()
    {
        // Polls 1 s, 2 s, 4 s ... apart: without the doorbell the write below waits for the next poll.
        var options = new VhostUserOptions { NotifyPollFast = TimeSpan.FromSeconds(1), NotifyPollHold = TimeSpan.Zero, NotifyPollSlow = TimeSpan.FromSeconds(10) };
        await using var c = Connected.Open(options, start: true);
        (Backend b, VhostUserFrontend f) = (c.B, c.F);
        b.WaitFor(() => f.MappingCount(ShmId.Notify) == 1, "the NOTIFY window mapped at start");
        b.On(() => b.Device.SlotsInUse = 4);
        nint window = f.ShmAddress(ShmId.Notify);
        for (int i = 1; i <= 3; i++)
        {
            long start = System.Diagnostics.Stopwatch.GetTimestamp();
            f.Notify(2 * 8); // twice the same call: each store changes the slot, so each is seen
            b.WaitFor(() => b.Device.NotifyWrites.Count == i, $"notify {i} to be reported");
            TimeSpan took = System.Diagnostics.Stopwatch.GetElapsedTime(start);
            Assert.True(took < TimeSpan.FromMilliseconds(900), $"notify {i} took {took.TotalMilliseconds:F0} ms: it waited for a poll");
            Assert.Equal((byte)i, Marshal.ReadByte(window, 16));
        }
        Assert.Equal([16UL, 16UL, 16UL], b.Device.NotifyWrites.ToArray());
    }

    [Fact]
    public async Task NotifyPollingStopsWhileNoSlotIsInUse()
    {
        await using var c = Connected.Open(start: true);
        (Backend b, VhostUserFrontend f) = (c.B, c.F);
        b.WaitFor(() => f.MappingCount(ShmId.Notify) == 1, "the NOTIFY window mapped at start");
        b.WaitFor(() => b.Transport.Session!.Poller is { Armed: false }, "the poller to disarm with no slot in use");
        long scans = b.On(() => b.Transport.Session!.Poller!.Scans);
        Thread.Sleep(200);
        Assert.Equal(scans, b.On(() => b.Transport.Session!.Poller!.Scans));
        b.On(() => b.Device.SlotsInUse = 1);
        f.Kick(0);
        b.WaitFor(() => b.Transport.Session!.Poller!.Scans > scans, "polling to resume after a kick");
    }

    [Fact]
    public async Task AMappedBlockIsSharedWithTheFrontendWindowAndUnmappedAgain()
    {
        await using var c = Connected.Open(start: true);
        (Backend b, VhostUserFrontend f) = (c.B, c.F);
        using var block = new TestBlock(1 << 20);
        "written by the backend"u8.CopyTo(block.Span(64));
        Assert.Null(b.Map(ShmId.Regions, 1 << 20, block, 1 << 20, writable: true));
        Assert.Equal(1, f.MappingCount(ShmId.Regions));
        unsafe
        {
            var window = new Span<byte>((void*)(f.ShmAddress(ShmId.Regions) + (1 << 20)), 64);
            Assert.Equal("written by the backend"u8.ToArray(), window[..22].ToArray());
            "written by the driver"u8.CopyTo(window[32..]);
        }
        Assert.Equal("written by the driver"u8.ToArray(), block.Span(64)[32..53].ToArray());
        Assert.Null(b.Unmap(ShmId.Regions, 1 << 20, 1 << 20));
        Assert.Equal(0, f.MappingCount(ShmId.Regions));
    }

    [Fact]
    public async Task AReadOnlyMappingIsReadOnlyInTheFrontend()
    {
        await using var c = Connected.Open(start: true);
        (Backend b, VhostUserFrontend f) = (c.B, c.F);
        using var block = new TestBlock(1 << 20);
        Assert.Null(b.Map(ShmId.Regions, 0, block, 1 << 20, writable: false));
        ulong start = (ulong)f.ShmAddress(ShmId.Regions);
        string line = File.ReadLines("/proc/self/maps").First(l => Convert.ToUInt64(l[..l.IndexOf('-')], 16) == start);
        Assert.StartsWith("r--s", line.Split(' ')[1]);
    }

    [Fact]
    public async Task MappingIsRefusedBeforeTheDeviceIsStarted()
    {
        await using var c = Connected.Open();
        (Backend b, VhostUserFrontend f) = (c.B, c.F);
        using var block = new TestBlock(1 << 20);
        Assert.False(b.On(() => b.Services.CanMap));
        string? error = b.Map(ShmId.Regions, 0, block, 1 << 20, writable: true);
        Assert.Contains("not started", error);
        Assert.Equal(0, f.BackendMaps);
        Assert.Equal(1, b.Counters.Get("vhost-user.map-errors"));
    }

    [Theory]
    [InlineData(4096UL, 1UL << 20, "overlaps")]              // a mapping at 0 is made first
    [InlineData(100UL, 4096UL, "not page aligned")]
    [InlineData(2UL << 20, 4096UL, "outside")]
    [InlineData(0UL, 0UL, "empty")]
    public async Task BadWindowRangesAreRefusedWithoutReachingTheFrontend(ulong offset, ulong length, string reason)
    {
        await using var c = Connected.Open(start: true);
        (Backend b, VhostUserFrontend f) = (c.B, c.F);
        int mapsBefore = f.BackendMaps;
        using var block = new TestBlock(2 << 20);
        if (reason == "overlaps")
        {
            Assert.Null(b.Map(ShmId.Regions, 0, block, 1 << 20, writable: true));
            mapsBefore = f.BackendMaps;
        }
        string? error = b.Map(ShmId.Regions, offset, block, length, writable: true);
        Assert.NotNull(error);
        Assert.Contains(reason, error);
        Assert.Equal(mapsBefore, f.BackendMaps);
    }

    [Theory]
    [InlineData(true)]  // SET_STATUS 0 at the stop: the device resets at once
    [InlineData(false)] // QEMU 11.1.3: only a stop; the restart at ring base 0 shows a new driver
    public async Task ADriverResetResetsTheDeviceAndDropsTheFrontendMappings(bool sendStatus)
    {
        await using var c = Connected.Open(frontend: new VhostUserFrontendOptions { SendStartStopStatus = sendStatus }, start: true);
        (Backend b, VhostUserFrontend f) = (c.B, c.F);
        using var block = new TestBlock(1 << 20);
        Assert.Null(b.Map(ShmId.Regions, 0, block, 1 << 20, writable: true));
        f.Kick(0); // the controlq moves on: its base is no longer 0
        Assert.True(f.WaitQueue(0, TimeSpan.FromSeconds(20)));
        int resets = b.On(() => b.Device.ResetCount);
        f.WriteStatus(DeviceStatus.Reset);
        b.WaitFor(() => !b.Services.CanMap, "the stop");
        Assert.Equal(0, f.MappingCount(ShmId.Regions));
        Assert.Equal(0, f.MappingCount(ShmId.Notify));
        if (sendStatus) b.WaitFor(() => b.Device.ResetCount > resets && b.Device.Status == DeviceStatus.Reset, "the device reset");
        else Assert.Equal(resets, b.On(() => b.Device.ResetCount)); // a stop alone is not a reset (it may be a pause)
        // Started again, the device works as before, from a reset state.
        Probe(f);
        b.WaitFor(() => b.Device.Status == Running && b.Services.CanMap, "a second start");
        Assert.True(b.On(() => b.Device.ResetCount) > resets);
        Assert.Equal(sendStatus ? 0 : 1, b.Counters.Get("vhost-user.implicit-resets"));
        Assert.Null(b.Map(ShmId.Regions, 0, block, 1 << 20, writable: true));
    }

    [Fact]
    public async Task AStopAndARestartWhereTheRingsStoppedKeepTheDevicesState()
    {
        await using var c = Connected.Open(start: true);
        (Backend b, VhostUserFrontend f) = (c.B, c.F);
        using var block = new TestBlock(1 << 20);
        Assert.Null(b.Map(ShmId.Regions, 0, block, 1 << 20, writable: true));
        f.Kick(0);
        Assert.True(f.WaitQueue(0, TimeSpan.FromSeconds(20)));
        (int _, QueueSettings ring) = b.Device.StartedQueues.Single();
        int resets = b.On(() => b.Device.ResetCount);
        // A VM pause as QEMU 11.1.3 does it: rings disabled, GET_VRING_BASE; mappings kept.
        f.Send(FrontendRequest.SetVringEnable, new VringState(0, 0).ToBytes());
        Assert.True(VringState.TryRead(f.Request(FrontendRequest.GetVringBase, new VringState(0, 0).ToBytes()), out VringState stopped));
        Assert.Equal(1u, stopped.Num);
        Assert.False(b.On(() => b.Services.CanMap));
        // Resume: same features, the ring where it stopped.
        f.Send(FrontendRequest.SetFeatures, U64Payload.ToBytes(b.Device.DriverFeatures | (1UL << 30)));
        f.Send(FrontendRequest.SetVringBase, new VringState(0, stopped.Num).ToBytes());
        using EventFd kick = EventFd.Create();
        f.Send(FrontendRequest.SetVringKick, U64Payload.ToBytes(0), [kick.Handle]);
        f.Send(FrontendRequest.SetVringEnable, new VringState(0, 1).ToBytes());
        b.WaitFor(() => b.Services.CanMap, "the resume");
        Assert.Equal(resets, b.On(() => b.Device.ResetCount));
        Assert.Equal(0, b.Counters.Get("vhost-user.implicit-resets"));
        Assert.Equal(ring with { NextAvail = 1 }, b.Device.StartedQueues.Last().Settings);
        Assert.Equal(1, f.MappingCount(ShmId.Regions));
        Assert.Equal(1, f.MappingCount(ShmId.Notify)); // still mapped: not mapped twice
        Assert.Equal(0, b.Counters.Get("vhost-user.map-errors"));
    }

    [Fact]
    public async Task AKickSignalledBeforeItsRingIsEnabledIsDeliveredOnceWhenTheRingRuns()
    {
        await using var c = Connected.Open(start: true);
        (Backend b, VhostUserFrontend f) = (c.B, c.F);
        // Stop the controlq as QEMU does (disable, GET_VRING_BASE), then start it again the way QEMU
        // does: the kick fd first, created already signalled, and SET_VRING_ENABLE after it.
        f.Send(FrontendRequest.SetVringEnable, new VringState(0, 0).ToBytes());
        Assert.True(VringState.TryRead(f.Request(FrontendRequest.GetVringBase, new VringState(0, 0).ToBytes()), out VringState stopped));
        int kicks = b.On(() => b.Device.Kicks.Count);
        f.Send(FrontendRequest.SetFeatures, U64Payload.ToBytes(b.Device.DriverFeatures | (1UL << 30)));
        f.Send(FrontendRequest.SetVringBase, new VringState(0, stopped.Num).ToBytes());
        using EventFd kick = EventFd.Create();
        kick.Signal();
        f.Send(FrontendRequest.SetVringKick, U64Payload.ToBytes(0), [kick.Handle]);
        b.WaitFor(() => b.Counters.Get("vhost-user.kicks-deferred") == 1, "the kick on the disabled ring to be seen");
        Assert.Equal(kicks, b.On(() => b.Device.Kicks.Count)); // the ring does not run: nothing reached the device

        f.Send(FrontendRequest.SetVringEnable, new VringState(0, 1).ToBytes());
        b.WaitFor(() => b.Device.Kicks.Count == kicks + 1, "the deferred kick to reach the device");
        Assert.True(f.WaitQueue(0, TimeSpan.FromSeconds(20)), "the device's answer to the kick did not reach the call fd");
        Thread.Sleep(100);
        Assert.Equal(kicks + 1, b.On(() => b.Device.Kicks.Count)); // once
        Assert.Equal(1, b.Counters.Get("vhost-user.kicks-deferred"));
    }

    [Fact]
    public async Task MappingsAFrontendKeptOverAStopAreRemovedAtTheNextStart()
    {
        await using var c = Connected.Open(start: true);
        (Backend b, VhostUserFrontend f) = (c.B, c.F);
        using var block = new TestBlock(1 << 20);
        Assert.Null(b.Map(ShmId.Regions, 0, block, 1 << 20, writable: true));
        // A VM pause: QEMU stops the backend (GET_VRING_BASE, SET_STATUS 0) but keeps its mappings.
        f.Request(FrontendRequest.GetVringBase, new VringState(0, 0).ToBytes());
        f.Send(FrontendRequest.SetStatus, U64Payload.ToBytes(0));
        b.WaitFor(() => b.Device.Status == DeviceStatus.Reset, "the device reset");
        Assert.Equal(1, f.MappingCount(ShmId.Regions));
        // Resume as QEMU does: features, FEATURES_OK, ring, enable, DRIVER_OK. The backend removes
        // what it no longer backs before anything else.
        ulong features = (f.ReadDeviceFeatures() & Features.Mask(Features.Version1, Features.IsmEventIrq)) | (1UL << 30);
        f.Send(FrontendRequest.SetFeatures, U64Payload.ToBytes(features));
        f.Send(FrontendRequest.SetStatus, U64Payload.ToBytes((ulong)DeviceStatus.FeaturesOk));
        using EventFd kick = EventFd.Create();
        f.Send(FrontendRequest.SetVringKick, U64Payload.ToBytes(0), [kick.Handle]);
        f.Send(FrontendRequest.SetVringEnable, new VringState(0, 1).ToBytes());
        f.Send(FrontendRequest.SetStatus, U64Payload.ToBytes((ulong)Running));
        b.WaitFor(() => f.MappingCount(ShmId.Regions) == 0 && f.MappingCount(ShmId.Notify) == 1, "stale mappings removed, NOTIFY mapped again");
    }

    [Fact]
    public async Task PerRegionVectorsFireTheCallFdsOfTheExtraQueues()
    {
        await using var b = new Backend(new VhostUserOptions { Vectors = 2 });
        using var ram = new GuestRam();
        using VhostUserFrontend f = b.Connect(ram, new VhostUserFrontendOptions { VectorCount = 2 });
        Assert.Equal(3, f.QueueCount);
        Probe(f);
        b.WaitFor(() => b.Device.Status == Running, "DRIVER_OK");
        Assert.Equal(2, b.Services.VectorCount);
        b.On(() => { b.Services.SignalVector(1); return 0; });
        Assert.True(f.WaitVector(1, TimeSpan.FromSeconds(20)));
        Assert.False(f.WaitVector(0, TimeSpan.FromMilliseconds(50)));
        Assert.False(f.WaitQueue(0, TimeSpan.FromMilliseconds(50)));
        b.On(() => { b.Services.SignalVector(2); return 0; }); // out of range: dropped and counted
        Assert.Equal(1, b.Counters.Get("vhost-user.signals-dropped"));
    }

    [Fact]
    public async Task AConfigChangeReachesTheFrontendAsANewGeneration()
    {
        await using var c = Connected.Open();
        (Backend b, VhostUserFrontend f) = (c.B, c.F);
        uint before = f.ReadConfigGeneration();
        b.On(() => { b.Services.SignalConfigChange(); return 0; });
        b.WaitFor(() => f.ReadConfigGeneration() == before + 1, "CONFIG_CHANGE_MSG");
    }
}
