using System.Buffers.Binary;
using Vism.Core.InMemory;
using Vism.Native;
using Vism.Testing;

namespace Vism.Core.Tests;

/// <summary>
/// One test (at least) per device MUST of the virtio-ism v1 chapter, named after the statement,
/// plus the DESIGN.md decisions the chapter leaves open.
/// </summary>
public sealed class ConformanceTests
{
    // ---- Device configuration layout ----

    [Fact]
    public void GidMustBeTheSameEachTimeOnTheSameHostAndDifferFromOtherHosts()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir["host-a"], "4c4c4544004d3910804bb4c04f4e4d32\n");
        File.WriteAllText(dir["host-b"], "0f8fad5bd9cb469fa16570867728950e\n");
        ulong GidOf(string file)
        {
            using var host = new IsmHost(new IsmHostOptions { MachineIdPath = dir[file] }, new CapturingLogs());
            return host.Gid;
        }

        ulong first = GidOf("host-a");
        Assert.Equal(first, GidOf("host-a"));
        Assert.NotEqual(first, GidOf("host-b"));
        Assert.NotEqual(0UL, first);
        // The gid does not expose the machine id.
        Assert.NotEqual(0x4c4c4544004d3910UL, first);
    }

    [Fact]
    public void GidOfThisMachineIsStableAcrossHostsAndTheConfigReportsIt()
    {
        using var one = new IsmHost(new IsmHostOptions(), new CapturingLogs());
        using var two = new IsmHost(new IsmHostOptions(), new CapturingLogs());
        Assert.Equal(one.Gid, two.Gid);

        using var rig = new Rig(gid: null);
        Peer a = rig.AddClient("a");
        Assert.Equal(one.Gid, a.C.Gid);
    }

    [Fact]
    public void DevidMustBeUniqueOnTheHostAndNot0()
    {
        using var rig = new Rig();
        var devids = new HashSet<ulong>();
        for (int i = 0; i < 50; i++)
        {
            Peer p = rig.AddDevice($"d{i}");
            Assert.NotEqual(0UL, p.Device.DevId);
            Assert.True(devids.Add(p.Device.DevId));
            if (i % 2 == 0)
                rig.Host.RemoveDevice(p.Device); // a removed device's devid is not handed out again
        }
        Peer c = rig.AddClient("client");
        Assert.Equal(c.Device.DevId, c.C.DevId);
        Assert.DoesNotContain(c.C.DevId, devids);
    }

    [Fact]
    public void ConfigReportsRegionSizeAndNotifySizeOfTheDevice()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a", regionSize: 2 * Rig.MiB, window: 64 * Rig.MiB);
        Assert.Equal(2 * Rig.MiB, a.C.RegionSize);
        Assert.Equal(1UL, a.C.NotifySize);
    }

    // ---- Event ----

    [Fact]
    public void DeviceMustNotifyTheOtherDevicesThatReferToTheRegionWhenTheDriverNotifies()
    {
        using var rig = new Rig(SharingMode.Multi, loops: 3);
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");
        Peer c = rig.AddClient("c");
        Assert.True(c.C.Alloc(4096).Ok); // c's first slot is taken, so c sees the shared region elsewhere
        AllocReply region = a.C.Alloc(8192);
        ulong atB = b.C.Attach(region.Token).Offset;
        ulong atC = c.C.Attach(region.Token).Offset;

        a.C.Notify(region.Offset);

        Assert.True(b.E.WaitForUpdates(1, Rig.Wait));
        Assert.True(c.E.WaitForUpdates(1, Rig.Wait));
        a.Settle();
        Assert.Equal([atB], b.E.Updates);
        Assert.Equal([atC], c.E.Updates);
        Assert.Empty(a.E.Updates);
    }

    [Fact]
    public void EventqDeliversTheUpdateToTheDriverAsAVirtioIsmEvent()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a", RecordingEventChannel.Vq());
        Peer b = rig.AddClient("b", RecordingEventChannel.Vq());
        Assert.True(b.C.Driver.Has(Features.IsmEventVq));
        (AllocReply region, ulong at) = Rig.Share(a, b);

        a.C.Notify(region.Offset);

        Assert.Equal([at], b.C.WaitEvent(Rig.Wait));
        Assert.Null(a.C.WaitEvent(TimeSpan.FromMilliseconds(50)));
    }

    // ---- Device Initialization ----

    [Fact]
    public void DevidRemainsUnchangedDuringReset()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        ulong before = a.C.DevId;
        a.T.WriteStatus(DeviceStatus.Reset);
        using IsmClient again = IsmClient.Start(a.T);
        Assert.Equal(before, again.DevId);
        Assert.Equal(before, a.Device.DevId);
    }

    [Fact]
    public void DeviceDoesNotAllocatePhysicalMemoryDuringInitialization()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        Assert.Equal(0UL, a.Memory.Usage.Used);
        Assert.Equal(0, a.Memory.Allocations);
    }

    [Fact]
    public void SharedMemoryWindowsMustUseShmidRegionsAndNotify()
    {
        using var rig = new Rig();
        Peer a = rig.AddDevice("a", RecordingEventChannel.Irq());
        Assert.Equal([ShmId.Regions, ShmId.Notify], a.Device.SharedMemory.Select(w => w.Id));
        Assert.Equal(a.Device.Description.RegionsWindowSize, a.Device.SharedMemory[0].Length);
        Assert.Equal(a.Device.Description.NotifyWindowSize, a.Device.SharedMemory[1].Length);
    }

    [Fact]
    public void WithAnEventFeatureEachRegionMustHaveANotifyAddressOfNotifySizeInTheNotifyWindow()
    {
        using var rig = new Rig();
        Peer a = rig.AddDevice("a", RecordingEventChannel.Irq(), window: 64 * Rig.MiB, regionSize: Rig.MiB, notifySize: 64);
        Peer b = rig.AddDevice("b", RecordingEventChannel.Irq(), window: 64 * Rig.MiB, regionSize: Rig.MiB, notifySize: 64);
        a.Connect();
        b.Connect();
        DeviceDescription d = a.Device.Description;
        Assert.True((ulong)d.MaxRegions * d.NotifySize <= d.NotifyWindowSize);
        Assert.Equal(64UL, a.C.NotifySize);

        // Fill a's window and share its last region with b: the last byte of that region's notify
        // slot still routes to it.
        AllocReply last = default;
        for (int i = 0; i < d.MaxRegions; i++)
            last = a.C.Alloc(4096);
        Assert.True(last.Ok);
        ulong atB = b.C.Attach(last.Token).Offset;
        a.T.WriteNotify(last.Offset / d.RegionSize * d.NotifySize + d.NotifySize - 1);
        Assert.True(b.E.WaitForUpdates(1, Rig.Wait));
        Assert.Equal([atB], b.E.Updates);
    }

    // ---- Alloc ----

    [Fact]
    public void AllocMustCreateANewTokenForEachRegionAndReportItsOffset()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        var tokens = new HashSet<ulong>();
        var offsets = new HashSet<ulong>();
        for (int i = 0; i < 10; i++)
        {
            AllocReply r = a.C.Alloc(4096);
            Assert.True(r.Ok);
            Assert.NotEqual(0UL, r.Token);
            Assert.True(tokens.Add(r.Token));
            Assert.Equal(0UL, r.Offset % a.C.RegionSize);
            Assert.True(offsets.Add(r.Offset));
            Assert.True(a.T.Mappings.ContainsKey(r.Offset)); // the region is mapped where the reply says
        }
    }

    [Fact]
    public void AllocMustSetErrWhenTheSharedMemorySpaceHasNoFreeArea()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        int slots = a.Device.Description.MaxRegions;
        for (int i = 0; i < slots; i++)
            Assert.True(a.C.Alloc(4096).Ok);
        Assert.Equal(IsmControl.AckErr, a.C.Alloc(4096).Ack);
        Assert.Equal(1, a.Counters.Get("err.alloc.no-slot"));
        Assert.True(rig.Logs.Contains("alloc.no-slot"));
        // Freeing one slot makes room again, at that slot.
        Assert.Equal(IsmControl.AckOk, a.C.Detach(3 * a.C.RegionSize));
        AllocReply again = a.C.Alloc(4096);
        Assert.True(again.Ok);
        Assert.Equal(3 * a.C.RegionSize, again.Offset);
    }

    [Fact]
    public void AllocMustSetErrWhenNewPhysicalMemoryCannotBeAllocated()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a", capacity: 2 * Rig.MiB);
        Assert.True(a.C.Alloc(Rig.MiB).Ok);
        Assert.True(a.C.Alloc(Rig.MiB).Ok);
        Assert.Equal(IsmControl.AckErr, a.C.Alloc(4096).Ack);
        Assert.Equal(1, a.Counters.Get("err.alloc.no-memory"));
        Assert.Equal(2, rig.Host.RegionCount);
        Assert.Equal(2 * Rig.MiB, a.Memory.Usage.Used);
    }

    [Fact]
    public void AllocMustClearTheNewRegionBeforeCommittingItToTheGuest()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        AllocReply first = a.C.Alloc(Rig.MiB);
        Assert.True(a.C.Region(first.Offset, (int)Rig.MiB).IndexOfAnyExcept((byte)0) < 0);
        a.C.Region(first.Offset, (int)Rig.MiB).Fill(0xa5);
        Assert.Equal(IsmControl.AckOk, a.C.Detach(first.Offset));

        AllocReply second = a.C.Alloc(Rig.MiB);
        Assert.Equal(first.Offset, second.Offset); // the same slot, fresh memory
        Assert.True(a.C.Region(second.Offset, (int)Rig.MiB).IndexOfAnyExcept((byte)0) < 0);
    }

    [Fact]
    public void AllocMustSetErrWhenSizeIsGreaterThanRegionSize()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        Assert.Equal(IsmControl.AckErr, a.C.Alloc(a.C.RegionSize + 1).Ack);
        Assert.Equal(1, a.Counters.Get("err.alloc.too-large"));
        Assert.True(rig.Logs.Contains("alloc.too-large"));
        Assert.True(a.C.Alloc(a.C.RegionSize).Ok);
        Assert.Equal(IsmControl.AckErr, a.C.Alloc(ulong.MaxValue).Ack);
        Assert.Equal(IsmControl.AckErr, a.C.Alloc(0).Ack);
        Assert.Equal(1, a.Counters.Get("err.alloc.zero-size"));
    }

    [Fact]
    public void ARegionSmallerThanRegionSizeStillOccupiesRegionSizeInTheWindow()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        AllocReply one = a.C.Alloc(100);
        AllocReply two = a.C.Alloc(100);
        Assert.Equal(a.C.RegionSize, two.Offset - one.Offset);
        // Only the pages the region needs are backed and mapped: no SIGBUS-prone over-long mapping.
        Assert.Equal(4096UL, a.T.Mappings[one.Offset].Length);
        Assert.Equal(8192UL, a.Memory.Usage.Used);
    }

    // ---- Attach ----

    [Fact]
    public void AttachMustSetErrWhenTheSharedMemorySpaceHasNoFreeArea()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");
        AllocReply region = a.C.Alloc(4096);
        for (int i = 0; i < b.Device.Description.MaxRegions; i++)
            Assert.True(b.C.Alloc(4096).Ok);
        Assert.Equal(IsmControl.AckErr, b.C.Attach(region.Token).Ack);
        Assert.Equal(1, b.Counters.Get("err.attach.no-slot"));
        Assert.Single(rig.Host.Snapshot().Regions, r => r.OwnerDevId == a.Device.DevId);
    }

    [Fact]
    public void AttachMustSetErrWhenNoRegionHasTheToken()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");
        AllocReply region = a.C.Alloc(4096);
        Assert.Equal(IsmControl.AckErr, b.C.Attach(region.Token ^ 1).Ack);
        Assert.Equal(IsmControl.AckErr, b.C.Attach(0).Ack);
        Assert.Equal(2, b.Counters.Get("err.attach.unknown-token"));
        Assert.Equal(0, b.Device.RegionsInUse);
    }

    [Fact]
    public void AttachedRegionIsOnlySharedBetweenTheTwoDevicesInPairMode()
    {
        using var rig = new Rig(SharingMode.Pair);
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");
        Peer c = rig.AddClient("c");
        AllocReply region = Rig.Share(a, b).Region;
        Assert.Equal(IsmControl.AckErr, c.C.Attach(region.Token).Ack);
        Assert.Equal(1, c.Counters.Get("err.attach.pair-taken"));
    }

    [Fact]
    public void AfterADetachOnlyThePreviousPeerMayReattachInPairMode()
    {
        using var rig = new Rig(SharingMode.Pair);
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");
        Peer c = rig.AddClient("c");
        AllocReply region = a.C.Alloc(4096);
        AttachReply atB = b.C.Attach(region.Token);
        Assert.Equal(IsmControl.AckOk, b.C.Detach(atB.Offset));
        Assert.Equal(IsmControl.AckErr, c.C.Attach(region.Token).Ack);
        Assert.True(b.C.Attach(region.Token).Ok);

        // The allocator may also come back after detaching while b holds the region.
        Assert.Equal(IsmControl.AckOk, a.C.Detach(region.Offset));
        Assert.Equal(IsmControl.AckErr, c.C.Attach(region.Token).Ack);
        Assert.True(a.C.Attach(region.Token).Ok);
    }

    [Fact]
    public void MultiModeLetsAnyNumberOfDevicesAttach()
    {
        using var rig = new Rig(SharingMode.Multi);
        Peer a = rig.AddClient("a");
        AllocReply region = a.C.Alloc(4096);
        a.C.Region(region.Offset, 4).Fill(7);
        for (int i = 0; i < 4; i++)
        {
            Peer p = rig.AddClient($"p{i}");
            AttachReply r = p.C.Attach(region.Token);
            Assert.True(r.Ok);
            Assert.Equal([7, 7, 7, 7], p.C.Region(r.Offset, 4).ToArray());
        }
        Assert.Equal(5, rig.Host.Snapshot().Regions.Single().References.Count);
    }

    [Fact]
    public void ADeviceCannotAttachARegionItAlreadyReferences()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        AllocReply region = a.C.Alloc(4096);
        Assert.Equal(IsmControl.AckErr, a.C.Attach(region.Token).Ack);
        Assert.Equal(1, a.Counters.Get("err.attach.already-attached"));
    }

    // ---- Detach ----

    [Fact]
    public void DetachMustSetErrWhenNoRegionIsAssignedAtTheOffset()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        AllocReply region = a.C.Alloc(4096);
        Assert.Equal(IsmControl.AckErr, a.C.Detach(region.Offset + a.C.RegionSize));
        Assert.Equal(IsmControl.AckErr, a.C.Detach(region.Offset + 4096)); // inside the region, not its offset
        Assert.Equal(IsmControl.AckErr, a.C.Detach(ulong.MaxValue - 4095));
        Assert.Equal(3, a.Counters.Get("err.detach.not-assigned"));
        Assert.Equal(IsmControl.AckOk, a.C.Detach(region.Offset));
        Assert.Equal(IsmControl.AckErr, a.C.Detach(region.Offset));
    }

    [Fact]
    public void DetachMustReleaseTheRegionMemoryFromTheGuest()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        AllocReply region = a.C.Alloc(4096);
        Assert.True(a.T.Mappings.ContainsKey(region.Offset));
        Assert.Equal(IsmControl.AckOk, a.C.Detach(region.Offset));
        Assert.False(a.T.Mappings.ContainsKey(region.Offset));
        Assert.Equal(1, a.T.UnmapCount);
    }

    [Fact]
    public void ARegionIsFullyReleasedOnlyAfterEveryDeviceReleasedIt()
    {
        using var rig = new Rig(SharingMode.Multi);
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");
        Peer c = rig.AddClient("c");
        AllocReply region = a.C.Alloc(Rig.MiB);
        ulong atB = b.C.Attach(region.Token).Offset;
        ulong atC = c.C.Attach(region.Token).Offset;
        a.C.Region(region.Offset, 5).Fill(9);

        Assert.Equal(IsmControl.AckOk, a.C.Detach(region.Offset));
        Assert.Equal(IsmControl.AckOk, b.C.Detach(atB));
        a.Settle();
        Assert.Equal(Rig.MiB, a.Memory.Usage.Used);
        Assert.Equal([9, 9, 9, 9, 9], c.C.Region(atC, 5).ToArray());

        Assert.Equal(IsmControl.AckOk, c.C.Detach(atC));
        a.Settle();
        Assert.Equal(0UL, a.Memory.Usage.Used);
        Assert.Equal(0, rig.Host.RegionCount);
    }

    // ---- Grant ----

    [Fact]
    public void GrantMustSetErrWhenNoRegionIsAssignedAtTheOffset()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        Assert.Equal(IsmControl.AckErr, a.C.Grant(0, 0, IsmPermissions.Read));
        Assert.Equal(1, a.Counters.Get("err.grant.not-assigned"));
    }

    [Fact]
    public void GrantMustBeAnsweredAccordingToThePermissionsTheDeviceHas()
    {
        using var rig = new Rig(SharingMode.Multi);
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");
        Peer c = rig.AddClient("c");
        (AllocReply region, ulong atB) = Rig.Share(a, b);

        // Only the allocating device manages by default.
        Assert.Equal(IsmControl.AckErr, b.C.Grant(atB, 0, IsmPermissions.All));
        Assert.Equal(1, b.Counters.Get("err.grant.denied"));

        // Given MANAGE, b may change permissions: it denies everyone else.
        Assert.Equal(IsmControl.AckOk, a.C.Grant(region.Offset, b.Device.DevId,
            IsmPermissions.Read | IsmPermissions.Write | IsmPermissions.Attach | IsmPermissions.Manage));
        Assert.Equal(IsmControl.AckOk, b.C.Grant(atB, 0, IsmPermissions.None));
        Assert.Equal(IsmControl.AckErr, c.C.Attach(region.Token).Ack);
        Assert.Equal(1, c.Counters.Get("err.attach.denied"));
        Assert.Equal(IsmControl.AckErr, a.C.Grant(region.Offset, 0, (IsmPermissions)(1UL << 5)));
        Assert.Equal(1, a.Counters.Get("err.grant.bad-permissions"));
    }

    [Fact]
    public void ByDefaultAnyDeviceMayAttachReadAndWrite()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");
        AllocReply region = a.C.Alloc(4096);
        AttachReply r = b.C.Attach(region.Token);
        Assert.True(r.Ok);
        Assert.True(b.T.Mappings[r.Offset].Writable);
    }

    [Fact]
    public void APeerWithReadButNotWriteGetsAReadOnlyMapping()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");
        AllocReply region = a.C.Alloc(4096);
        Assert.Equal(IsmControl.AckOk, a.C.Grant(region.Offset, b.Device.DevId, IsmPermissions.Attach | IsmPermissions.Read));
        a.C.Region(region.Offset, 3).Fill(1);
        AttachReply r = b.C.Attach(region.Token);
        Assert.True(r.Ok);
        Assert.False(b.T.Mappings[r.Offset].Writable);
        Assert.Equal([1, 1, 1], b.C.Region(r.Offset, 3).ToArray());
    }

    [Fact]
    public void APeerWithNeitherReadNorWriteCannotAttach()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");
        AllocReply region = a.C.Alloc(4096);
        Assert.Equal(IsmControl.AckOk, a.C.Grant(region.Offset, b.Device.DevId, IsmPermissions.Attach));
        Assert.Equal(IsmControl.AckErr, b.C.Attach(region.Token).Ack);
        Assert.Equal(1, b.Counters.Get("err.attach.no-access"));
    }

    [Fact]
    public void DenyOtherLetsOnlyDevicesWithTheirOwnEntryAttach()
    {
        using var rig = new Rig(SharingMode.Multi);
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");
        Peer c = rig.AddClient("c");
        AllocReply region = a.C.Alloc(4096);
        Assert.Equal(IsmControl.AckOk, a.C.Grant(region.Offset, b.Device.DevId,
            IsmPermissions.Attach | IsmPermissions.Read | IsmPermissions.Write | IsmPermissions.DenyOther));
        Assert.Equal(IsmControl.AckErr, c.C.Attach(region.Token).Ack);
        Assert.Equal(1, c.Counters.Get("err.attach.denied"));
        Assert.True(b.C.Attach(region.Token).Ok);

        // DENY_OTHER belongs to b's entry (issue 13.3): a default-entry GRANT does not lift it,
        // setting b's entry again without it does.
        Assert.Equal(IsmControl.AckOk, a.C.Grant(region.Offset, 0, IsmPermissions.Attach | IsmPermissions.Read));
        Assert.Equal(IsmControl.AckErr, c.C.Attach(region.Token).Ack);
        Assert.Equal(IsmControl.AckOk, a.C.Grant(region.Offset, b.Device.DevId, IsmPermissions.Attach | IsmPermissions.Read | IsmPermissions.Write));
        AttachReply r = c.C.Attach(region.Token);
        Assert.True(r.Ok);
        Assert.False(c.T.Mappings[r.Offset].Writable);
    }

    [Fact]
    public void DefaultEntryWithoutAttachStopsUnlistedDevicesFromAttaching()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");
        AllocReply region = a.C.Alloc(4096);
        Assert.Equal(IsmControl.AckOk, a.C.Grant(region.Offset, 0, IsmPermissions.Read | IsmPermissions.Write));
        Assert.Equal(IsmControl.AckErr, b.C.Attach(region.Token).Ack);
        Assert.Equal(IsmControl.AckOk, a.C.Grant(region.Offset, b.Device.DevId, IsmPermissions.Attach | IsmPermissions.Read | IsmPermissions.Write));
        AttachReply r = b.C.Attach(region.Token);
        Assert.True(r.Ok);
        Assert.True(b.T.Mappings[r.Offset].Writable);
    }

    // ---- Inform Event IRQ Vector ----

    [Fact]
    public void DeviceMustRecordTheVectorOfARegionAndNotifyThroughItWhenTheRegionIsUpdated()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");
        Assert.True(b.C.Driver.Has(Features.IsmEventIrq));
        (AllocReply region, ulong atB) = Rig.Share(a, b);
        Assert.Equal(IsmControl.AckOk, b.C.EventVector(atB, 2));
        Assert.Equal(2UL, b.E.Vectors[atB]);

        a.C.Notify(region.Offset);
        Assert.True(b.C.WaitVector(2, Rig.Wait));
        Assert.False(b.C.WaitVector(1, TimeSpan.FromMilliseconds(20)));
    }

    [Fact]
    public void EventVectorIsErrWithoutEventIrqForAnUnassignedOffsetOrWhenTheChannelRefuses()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a", RecordingEventChannel.Vq());
        AllocReply region = a.C.Alloc(4096);
        Assert.Equal(IsmControl.AckErr, a.C.EventVector(region.Offset, 0));
        Assert.Equal(1, a.Counters.Get("err.event-vector.not-negotiated"));

        Peer b = rig.AddClient("b");
        AllocReply other = b.C.Alloc(4096);
        Assert.Equal(IsmControl.AckErr, b.C.EventVector(other.Offset + b.C.RegionSize, 0));
        Assert.Equal(1, b.Counters.Get("err.event-vector.not-assigned"));
        Assert.Equal(IsmControl.AckErr, b.C.EventVector(other.Offset, 99)); // the transport offers 4 vectors
        Assert.Equal(1, b.Counters.Get("err.event-vector.rejected"));
        Assert.True(rig.Logs.Contains("vector 99"));
    }

    [Fact]
    public void DetachingARegionDropsItsVectorBindingInTheEventChannel()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        AllocReply region = a.C.Alloc(4096);
        Assert.Equal(IsmControl.AckOk, a.C.EventVector(region.Offset, 1));
        Assert.Equal(IsmControl.AckOk, a.C.Detach(region.Offset));
        Assert.Equal([region.Offset], a.E.Detached);
        Assert.Empty(a.E.Vectors);
    }

    // ---- Control virtqueue format ----

    [Fact]
    public void AckIsTheFirstDeviceWritableByteFollowedByTheReply()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        var payload = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(payload, 4096);
        ControlResult r = a.C.Send(IsmControl.ClassAlloc, 0, payload, 16);
        Assert.Equal(IsmControl.AckOk, r.Ack);
        Assert.Equal(17u, r.Written);
        Assert.NotEqual(0UL, BinaryPrimitives.ReadUInt64LittleEndian(r.Reply));

        ControlResult err = a.C.Send(IsmControl.ClassAlloc, 0, payload, 16);
        Assert.True(err.Ok);
        BinaryPrimitives.WriteUInt64LittleEndian(payload, ulong.MaxValue);
        err = a.C.Send(IsmControl.ClassAlloc, 0, payload, 16);
        Assert.Equal(IsmControl.AckErr, err.Ack);
        Assert.Equal(1u, err.Written);
    }
}
