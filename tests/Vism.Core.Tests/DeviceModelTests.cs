using System.Buffers.Binary;

namespace Vism.Core.Tests;

/// <summary>Status transitions, feature negotiation, config space and reset of the virtio device model.</summary>
public sealed class DeviceModelTests
{
    private const DeviceStatus A = DeviceStatus.Acknowledge;
    private const DeviceStatus D = DeviceStatus.Driver;
    private const DeviceStatus FO = DeviceStatus.FeaturesOk;
    private const DeviceStatus DO = DeviceStatus.DriverOk;
    private const DeviceStatus F = DeviceStatus.Failed;
    private const DeviceStatus NR = DeviceStatus.DeviceNeedsReset;

    private static Peer Connected(Rig rig)
    {
        Peer p = rig.AddDevice("dev", RecordingEventChannel.Irq());
        p.Connect(startClient: false);
        return p;
    }

    private static bool Set(Peer p, DeviceStatus s) => p.T.Call(d => d.TrySetStatus(s));

    private static ulong Offered(Peer p) => p.T.ReadDeviceFeatures();

    /// <summary>Drives the device to <paramref name="target"/> through the valid sequence.</summary>
    private static void Reach(Peer p, DeviceStatus target)
    {
        foreach (DeviceStatus s in StatusTable.Sequence.Skip(1))
        {
            if ((s & ~target) != 0)
                break;
            if ((s & FO) != 0 && (p.Device.Status & FO) == 0)
                Assert.True(p.T.Call(d => d.TrySetDriverFeatures(Features.Mask(Features.Version1))));
            Assert.True(Set(p, s));
        }
        Assert.Equal(target, p.Device.Status);
    }

    public static TheoryData<DeviceStatus, DeviceStatus, bool> Transitions => new()
    {
        { 0, A, true },
        { 0, A | D, true },
        { A, A | D, true },
        { A | D, A | D | FO, true },
        { A | D | FO, A | D | FO | DO, true },
        { A | D | FO | DO, A | D | FO | DO, true },   // rewriting the same status
        { 0, D, false },                                // DRIVER without ACKNOWLEDGE
        { A, A | FO, false },                           // FEATURES_OK without DRIVER
        { A | D, A | D | DO, false },                   // DRIVER_OK before FEATURES_OK
        { A | D, A | D | FO | DO, false },              // FEATURES_OK must be latched (and re-read) first
        { A | D | FO, A | D, false },                   // clearing a bit
        { A | D | FO | DO, A, false },
        { A | D, A | D | (DeviceStatus)16, false },     // undefined bits
        { A | D, A | D | (DeviceStatus)32, false },
        { A, A | F, true },                             // FAILED at any time
        { A | D | FO | DO, A | D | FO | DO | F, true },
    };

    [Theory]
    [MemberData(nameof(Transitions))]
    public void StatusTransitionTable(DeviceStatus from, DeviceStatus to, bool accepted)
    {
        using var rig = new Rig();
        Peer p = Connected(rig);
        Reach(p, from);
        if ((to & FO) != 0 && (from & FO) == 0)
            Assert.True(p.T.Call(d => d.TrySetDriverFeatures(Features.Mask(Features.Version1))));
        Assert.Equal(accepted, Set(p, to));
        Assert.Equal(accepted ? to : from, p.Device.Status);
        Assert.Equal(accepted ? 0 : 1, p.Counters.Get("err.status.refused"));
    }

    [Fact]
    public void AfterFailedOnlyAResetIsAccepted()
    {
        using var rig = new Rig();
        Peer p = Connected(rig);
        Reach(p, A | D);
        Assert.True(Set(p, A | D | F));
        Assert.False(Set(p, A | D | F | FO));
        Assert.True(Set(p, DeviceStatus.Reset));
        Assert.Equal(DeviceStatus.Reset, p.Device.Status);
        Assert.True(Set(p, A));
    }

    [Fact]
    public void FeaturesOkIsRefusedForFeaturesTheDeviceDidNotOffer()
    {
        using var rig = new Rig();
        Peer p = Connected(rig);
        Reach(p, A | D);
        ulong notOffered = ~Offered(p) & ~Features.Mask(Features.Version1);
        Assert.True(p.T.Call(d => d.TrySetDriverFeatures(Features.Mask(Features.Version1) | (notOffered & (0 - notOffered)))));
        Assert.False(Set(p, A | D | FO));
        Assert.Equal(A | D, p.T.ReadStatus());
        Assert.Equal(1, p.Counters.Get("err.status.features-refused"));

        Assert.True(p.T.Call(d => d.TrySetDriverFeatures(Offered(p))));
        Assert.True(Set(p, A | D | FO));
    }

    [Fact]
    public void FeaturesOkIsRefusedWithoutVersion1()
    {
        using var rig = new Rig();
        Peer p = Connected(rig);
        Reach(p, A | D);
        Assert.True(p.T.Call(d => d.TrySetDriverFeatures(Features.Mask(Features.RingEventIdx))));
        Assert.False(Set(p, A | D | FO));
        Assert.True(rig.Logs.Contains("VERSION_1"));
    }

    [Fact]
    public void DeviceOffersVersion1RingFeaturesAndTheEventChannelBitsOnly()
    {
        using var rig = new Rig();
        Peer irq = Connected(rig);
        Assert.Equal(Features.Mask(Features.Version1, Features.RingIndirectDesc, Features.RingEventIdx, Features.IsmEventIrq), Offered(irq));
        Peer none = rig.AddDevice("none");
        none.Connect(startClient: false);
        Assert.Equal(Features.Mask(Features.Version1, Features.RingIndirectDesc, Features.RingEventIdx), Offered(none));
        Assert.Equal(1, none.Device.QueueCount);
        Peer vq = rig.AddDevice("vq", RecordingEventChannel.Vq());
        Assert.Equal(2, vq.Device.QueueCount);
    }

    [Fact]
    public void DriverFeaturesCannotChangeAfterFeaturesOk()
    {
        using var rig = new Rig();
        Peer p = Connected(rig);
        Reach(p, A | D | FO);
        ulong before = p.Device.DriverFeatures;
        Assert.False(p.T.Call(d => d.TrySetDriverFeatures(Offered(p))));
        Assert.Equal(before, p.Device.DriverFeatures);
        Assert.Equal(1, p.Counters.Get("err.features.after-features-ok"));
    }

    [Fact]
    public void TheDriverCannotClearDeviceNeedsResetOnlyResetDoes()
    {
        using var rig = new Rig();
        Peer p = rig.AddClient("p");
        p.OnLoop(() => { p.Device.Fail("test", "forced"); return true; });
        DeviceStatus failed = p.Device.Status;
        Assert.True((failed & NR) != 0);
        Assert.True(p.T.WaitConfigChange(Rig.Wait));
        Assert.True(Set(p, failed & ~NR)); // the driver's copy of the bit is ignored...
        Assert.Equal(failed, p.Device.Status); // ...so it stays set
        Assert.True(Set(p, failed | F));
        Assert.True(Set(p, DeviceStatus.Reset));
        Assert.Equal(DeviceStatus.Reset, p.Device.Status);
    }

    [Fact]
    public void ResetKeepsDevidReleasesAttachmentsAndClearsFeatures()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");
        AllocReply region = Rig.Share(a, b).Region;
        Assert.True(b.C.Alloc(4096).Ok);
        Assert.Equal(2, rig.Host.RegionCount);
        ulong devid = b.Device.DevId;

        b.T.WriteStatus(DeviceStatus.Reset);
        Assert.Equal(DeviceStatus.Reset, b.Device.Status);
        Assert.Equal(0UL, b.Device.DriverFeatures);
        Assert.Equal(devid, b.Device.DevId);
        Assert.Equal(0, b.Device.RegionsInUse);
        Assert.Empty(b.T.Mappings);
        Assert.Equal(1, rig.Host.RegionCount); // b's own region is gone, a's remains with a
        Assert.Single(rig.Host.Snapshot().Regions.Single().References);
        Assert.Equal(1, b.E.Deactivations);
    }

    [Fact]
    public void DisconnectReleasesEveryAttachmentAndOtherDevicesKeepWorking()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");
        AllocReply region = Rig.Share(a, b).Region;
        Assert.True(b.C.Alloc(4096).Ok);

        b.Dispose(); // the driver goes away: its client resets and the transport disconnects
        Assert.False(b.Device.IsConnected);
        Assert.Equal(1, rig.Host.RegionCount);
        Assert.True(a.C.Alloc(4096).Ok);
        a.C.Notify(region.Offset); // no peer any more: nothing routed, nothing crashes
        a.Settle();
        Assert.Equal(0, a.Counters.Get("notify.routed"));
    }

    [Fact]
    public void KicksBeforeDriverOkAreIgnored()
    {
        using var rig = new Rig();
        Peer p = Connected(rig);
        p.T.Kick(0);
        p.T.Kick(5);
        p.Settle();
        Assert.Equal(1, p.Counters.Get("queue.kick-ignored"));
        Assert.Equal(1, p.Counters.Get("err.queue.bad-index"));
    }

    // ---- config space ----

    public static TheoryData<uint, int> EveryOffsetAndWidth()
    {
        var data = new TheoryData<uint, int>();
        for (uint offset = 0; offset <= 40; offset++)
            for (int width = 0; width <= 9; width++)
                data.Add(offset, width);
        data.Add(uint.MaxValue, 1);
        data.Add(uint.MaxValue - 3, 4);
        return data;
    }

    [Theory]
    [MemberData(nameof(EveryOffsetAndWidth))]
    public void ConfigReadAtEveryOffsetAndWidth(uint offset, int width)
    {
        using var rig = new Rig(gid: 0x1122334455667788);
        Peer p = rig.AddDevice("dev", regionSize: 2 * Rig.MiB, window: 64 * Rig.MiB, notifySize: 8);
        var expected = new byte[32];
        BinaryPrimitives.WriteUInt64LittleEndian(expected, 0x1122334455667788);
        BinaryPrimitives.WriteUInt64LittleEndian(expected.AsSpan(8), p.Device.DevId);
        BinaryPrimitives.WriteUInt64LittleEndian(expected.AsSpan(16), 2 * Rig.MiB);
        BinaryPrimitives.WriteUInt64LittleEndian(expected.AsSpan(24), 8);

        var buffer = new byte[width];
        bool ok = p.OnLoop(() => p.Device.TryReadConfig(offset, buffer));

        bool valid = width is 1 or 2 or 4 or 8 && (ulong)offset + (ulong)width <= 32;
        Assert.Equal(valid, ok);
        if (valid)
            Assert.Equal(expected.AsSpan((int)offset, width).ToArray(), buffer);
        else
            Assert.Equal(1, p.Counters.Sum("err.config."));
    }

    [Fact]
    public void ConfigSpaceIsReadOnlyAndItsGenerationDoesNotChange()
    {
        using var rig = new Rig();
        Peer p = rig.AddClient("p");
        uint generation = p.T.ReadConfigGeneration();
        Assert.False(p.OnLoop(() => p.Device.TryWriteConfig(0, new byte[8])));
        Assert.Equal(1, p.Counters.Get("err.config.write"));
        p.T.WriteStatus(DeviceStatus.Reset);
        Assert.Equal(generation, p.T.ReadConfigGeneration());
        Assert.Equal(32, p.Device.ConfigSize);
    }
}
