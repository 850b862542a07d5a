using System.Buffers.Binary;
using Microsoft.Win32.SafeHandles;

namespace Vism.Core.Tests;

/// <summary>Malformed control requests, failing transports and backends, and the one-request-at-a-time rule.</summary>
public sealed class ControlQueueTests
{
    private static byte[] U64(params ulong[] values)
    {
        var bytes = new byte[8 * values.Length];
        for (int i = 0; i < values.Length; i++)
            BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(8 * i), values[i]);
        return bytes;
    }

    public static TheoryData<string, byte, byte, int, int, string> MalformedRequests() => new()
    {
        { "unknown class", 5, 0, 8, 0, "ctrl.unknown-class" },
        { "class 255", 255, 0, 0, 0, "ctrl.unknown-class" },
        { "alloc with command 1", IsmControl.ClassAlloc, 1, 8, 16, "alloc.unknown-command" },
        { "attach with command 7", IsmControl.ClassAttach, 7, 8, 8, "attach.unknown-command" },
        { "detach with command 1", IsmControl.ClassDetach, 1, 8, 0, "detach.unknown-command" },
        { "grant with command 1", IsmControl.ClassGrant, 1, 24, 0, "grant.unknown-command" },
        { "event vector with command 1", IsmControl.ClassEventVector, 1, 16, 0, "event-vector.unknown-command" },
        { "alloc without a size", IsmControl.ClassAlloc, 0, 0, 16, "alloc.short" },
        { "alloc with 7 bytes of size", IsmControl.ClassAlloc, 0, 7, 16, "alloc.short" },
        { "alloc with 9 data bytes", IsmControl.ClassAlloc, 0, 9, 16, "alloc.oversized" },
        { "attach with 16 data bytes", IsmControl.ClassAttach, 0, 16, 8, "attach.oversized" },
        { "detach with 4 data bytes", IsmControl.ClassDetach, 0, 4, 0, "detach.short" },
        { "grant with 16 data bytes", IsmControl.ClassGrant, 0, 16, 0, "grant.short" },
        { "grant with 48 data bytes", IsmControl.ClassGrant, 0, 48, 0, "grant.oversized" },
        { "event vector with 8 data bytes", IsmControl.ClassEventVector, 0, 8, 0, "event-vector.short" },
        { "alloc with room for half the reply", IsmControl.ClassAlloc, 0, 8, 8, "alloc.reply-space" },
        { "attach with room for the ack only", IsmControl.ClassAttach, 0, 8, 0, "attach.reply-space" },
    };

    [Theory]
    [MemberData(nameof(MalformedRequests))]
    public void AMalformedRequestGetsAnErrAckItsReasonLoggedAndCounted(string name, byte cls, byte command,
        int dataLength, int replyLength, string reason)
    {
        using var rig = new Rig();
        Peer p = rig.AddClient("p");
        var data = new byte[dataLength];
        if (dataLength >= 8)
            BinaryPrimitives.WriteUInt64LittleEndian(data, 4096);

        ControlResult r = p.C.Send(cls, command, data, replyLength);

        Assert.Equal(IsmControl.AckErr, r.Ack);
        Assert.Equal(1u, r.Written);
        Assert.Equal(1, p.Counters.Get("err." + reason));
        Assert.True(rig.Logs.Contains(reason), name);
        Assert.Equal(0, rig.Host.RegionCount); // nothing was done on the side
        Assert.True(p.C.Alloc(4096).Ok);       // and the device keeps serving
    }

    [Fact]
    public void ARequestWithoutRoomForTheAckIsReturnedWithNothingWritten()
    {
        using var rig = new Rig();
        Peer p = rig.AddClient("p");
        ControlResult r = p.C.Send(IsmControl.ClassAlloc, 0, U64(4096), 16, ackSpace: false);
        Assert.Equal(0u, r.Written);
        Assert.Equal(1, p.Counters.Get("err.ctrl.no-ack-space"));
        Assert.Equal(0, rig.Host.RegionCount);
        Assert.True(p.C.Alloc(4096).Ok);
    }

    [Fact]
    public void ARequestShorterThanClassAndCommandIsErr()
    {
        using var rig = new Rig();
        Peer p = rig.AddClient("p");
        GuestRam ram = p.T.Ram;
        ulong req = ram.Allocate(1), ack = ram.Allocate(1);
        ram.Span(req, 1)[0] = IsmControl.ClassAlloc;
        ram.Span(ack, 1)[0] = 0xff;
        p.C.Driver.Queues[0].Add([new(req, 1)], [new(ack, 1)]);
        p.C.Driver.KickIfNeeded(0);
        Assert.True(p.C.Driver.WaitUsed(0, Rig.Wait, out UsedElement used));
        Assert.Equal(1u, used.Written);
        Assert.Equal(IsmControl.AckErr, ram.Span(ack, 1)[0]);
        Assert.Equal(1, p.Counters.Get("err.ctrl.short-header"));
    }

    [Fact]
    public void AFailedMapOfANewRegionIsErrAndLeaksNothing()
    {
        using var rig = new Rig();
        Peer p = rig.AddClient("p");
        p.T.MapFault = _ => "the VMM said no";
        Assert.Equal(IsmControl.AckErr, p.C.Alloc(4096).Ack);
        Assert.Equal(1, p.Counters.Get("err.alloc.map-failed"));
        Assert.True(rig.Logs.Contains("the VMM said no"));
        p.Settle();
        Assert.Equal(0, rig.Host.RegionCount);
        Assert.Equal(0UL, p.Memory.Usage.Used);
        Assert.Equal(0, p.Device.RegionsInUse);

        p.T.MapFault = null;
        Assert.Equal(0UL, p.C.Alloc(4096).Offset); // the slot was returned
    }

    [Fact]
    public void AFailedMapOfAnAttachedRegionIsErrAndTheRegionStaysWithItsOwner()
    {
        using var rig = new Rig();
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");
        AllocReply region = a.C.Alloc(4096);
        b.T.MapFault = _ => "no room in the BAR";
        Assert.Equal(IsmControl.AckErr, b.C.Attach(region.Token).Ack);
        Assert.Equal(1, b.Counters.Get("err.attach.map-failed"));
        Assert.Single(rig.Host.Snapshot().Regions.Single().References);
        b.T.MapFault = null;
        Assert.True(b.C.Attach(region.Token).Ok); // the failed attempt did not use up the pair
    }

    [Fact]
    public void AFailedUnmapIsErrAndTheRegionStaysAttached()
    {
        using var rig = new Rig();
        Peer p = rig.AddClient("p");
        AllocReply region = p.C.Alloc(4096);
        p.T.UnmapFault = _ => "busy";
        Assert.Equal(IsmControl.AckErr, p.C.Detach(region.Offset));
        Assert.Equal(1, p.Counters.Get("err.detach.unmap-failed"));
        Assert.Equal(1, p.Device.RegionsInUse);
        p.T.UnmapFault = null;
        Assert.Equal(IsmControl.AckOk, p.C.Detach(region.Offset));
        Assert.Equal(0, rig.Host.RegionCount);
    }

    [Fact]
    public void RequestsAreProcessedOneAtATimeAndCompleteOnlyAfterTheirMapping()
    {
        using var rig = new Rig();
        Peer p = rig.AddClient("p");
        GuestRam ram = p.T.Ram;
        DriverQueue q = p.C.Driver.Queues[0];
        ushort before = q.UsedIndex;
        p.T.HoldAnswers = true;
        (ushort first, ulong reply0) = Rig.AddAllocRequest(p);
        (ushort second, ulong reply1) = Rig.AddAllocRequest(p);
        p.T.Kick(0);

        Assert.True(VirtqueueTests.WaitUntil(() => p.T.HeldAnswers == 1));
        p.Settle();
        Assert.Equal(1, p.T.HeldAnswers);   // the second request waits for the first
        Assert.Equal(before, q.UsedIndex);  // and the first is not complete before its mapping is

        p.T.ReleaseHeldAnswers();
        Assert.True(VirtqueueTests.WaitUntil(() => p.T.HeldAnswers == 1 && q.UsedIndex == (ushort)(before + 1)));
        p.T.HoldAnswers = false;
        p.T.ReleaseHeldAnswers();
        Assert.True(VirtqueueTests.WaitUntil(() => q.UsedIndex == (ushort)(before + 2)));

        Assert.True(q.TryTakeUsed(out UsedElement u1));
        Assert.True(q.TryTakeUsed(out UsedElement u2));
        Assert.Equal([first, second], new[] { u1.Head, u2.Head });
        Assert.Equal(0UL, BinaryPrimitives.ReadUInt64LittleEndian(ram.Span(reply0 + 9, 8)));
        Assert.Equal(p.C.RegionSize, BinaryPrimitives.ReadUInt64LittleEndian(ram.Span(reply1 + 9, 8)));
    }

    [Fact]
    public void AResetWhileAMappingIsPendingReleasesTheRegionAndCompletesNothing()
    {
        using var rig = new Rig();
        Peer p = rig.AddClient("p");
        DriverQueue q = p.C.Driver.Queues[0];
        ushort before = q.UsedIndex;
        p.T.HoldAnswers = true;
        Rig.AddAllocRequest(p);
        p.T.Kick(0);
        Assert.True(VirtqueueTests.WaitUntil(() => p.T.HeldAnswers == 1));

        p.T.WriteStatus(DeviceStatus.Reset);
        p.T.HoldAnswers = false;
        p.T.ReleaseHeldAnswers();
        p.Settle();

        Assert.Equal(before, q.UsedIndex);
        Assert.Equal(0, rig.Host.RegionCount);
        Assert.Equal(0UL, p.Memory.Usage.Used);
        Assert.Equal(DeviceStatus.Reset, p.Device.Status);
        using IsmClient again = IsmClient.Start(p.T);
        Assert.True(again.Alloc(4096).Ok);
    }

    [Fact]
    public void AMemoryBackendThatThrowsOrReturnsABadBlockGivesErr()
    {
        using var rig = new Rig();
        var backend = new FaultyBackend();
        Peer p = rig.AddWithBackend("faulty", backend);

        backend.Mode = FaultyBackend.Fault.Throw;
        Assert.Equal(IsmControl.AckErr, p.C.Alloc(4096).Ack);
        Assert.Equal(1, p.Counters.Get("err.alloc.no-memory"));
        Assert.True(rig.Logs.Contains("InvalidOperationException"));

        backend.Mode = FaultyBackend.Fault.ShortBlock;
        Assert.Equal(IsmControl.AckErr, p.C.Alloc(8192).Ack);
        Assert.Equal(1, p.Counters.Get("err.alloc.backend-bad-block"));
        p.Settle();
        Assert.Equal(1, backend.Disposed); // the bad block was given back

        backend.Mode = FaultyBackend.Fault.HugePages;
        Assert.Equal(IsmControl.AckErr, p.C.Alloc(4096).Ack); // 2 MiB pages do not fit 1 MiB regions
        Assert.Equal(1, p.Counters.Get("err.alloc.page-too-large"));
        Assert.Equal(0, p.Device.RegionsInUse);
    }

    [Fact]
    public void AnEventChannelThatThrowsMarksOnlyItsDeviceDeviceNeedsReset()
    {
        using var rig = new Rig(loops: 1);
        var throwing = new ThrowingChannel();
        Peer a = rig.AddClient("a");
        Peer b = rig.AddDevice("b", throwing);
        b.Connect();
        AllocReply region = Rig.Share(a, b).Region;

        a.C.Notify(region.Offset);
        Assert.True(b.T.WaitConfigChange(Rig.Wait));
        Assert.True((b.Device.Status & DeviceStatus.DeviceNeedsReset) != 0);
        Assert.Equal(1, b.Counters.Get("err.events.plugin-failed"));
        Assert.True(a.C.Alloc(4096).Ok);
    }

    [Fact]
    public void ADriverRepeatingABadRequestIsCountedEveryTimeButCannotFloodTheLog()
    {
        using var rig = new Rig();
        Peer p = rig.AddClient("p");
        for (int i = 0; i < 100; i++)
            Assert.Equal(IsmControl.AckErr, p.C.Send(9, 0, [], 0).Ack);
        Assert.Equal(100, p.Counters.Get("err.ctrl.unknown-class"));
        Assert.Equal(10 + 3, rig.Logs.Entries.Count(e => e.Message.Contains("ctrl.unknown-class"))); // 1..10, 16, 32, 64
    }

    /// <summary>Queues an ALLOC of 4096 bytes without kicking; returns its head and reply address.</summary>
    /// <summary>A memory backend that fails in the ways a plugin could.</summary>
    private sealed class FaultyBackend : IMemoryBackend
    {
        public enum Fault { Throw, ShortBlock, HugePages }

        public Fault Mode { get; set; }

        public int Disposed;

        public ulong PageSize => Mode == Fault.HugePages ? 2 * Rig.MiB : 4096;

        public MemoryUsage Usage => new(1 << 30, 0, 0);

        public IMemoryBlock? TryAllocate(ulong length, ulong token, out string? failure)
        {
            failure = null;
            if (Mode == Fault.Throw)
                throw new InvalidOperationException("backend bug");
            return new Block(this, length / 2);
        }

        public IReadOnlyList<RecoveredBlock> Recover() => [];

        public void Dispose()
        {
        }

        private sealed class Block(FaultyBackend owner, ulong length) : IMemoryBlock
        {
            public SafeFileHandle Handle { get; } = new(IntPtr.Zero, ownsHandle: false);
            public ulong Offset => 0;
            public ulong Length => length;
            public void Release()
            {
            }

            public void Dispose() => Interlocked.Increment(ref owner.Disposed);
        }
    }

    private sealed class ThrowingChannel : IEventChannel
    {
        public ulong Features => Vism.Abstractions.Features.Mask(Vism.Abstractions.Features.IsmEventIrq);
        public int QueueCount => 0;
        public void Activate(IEventContext context)
        {
        }

        public void Deactivate()
        {
        }

        public void OnRegionUpdated(ulong offset) => throw new InvalidOperationException("plugin bug");

        public void OnRegionDetached(ulong offset)
        {
        }

        public bool TryBindVector(ulong offset, ulong vector, out string? failure)
        {
            failure = null;
            return true;
        }

        public void OnQueueNotified(int queueIndex)
        {
        }

        public void Dispose()
        {
        }
    }
}
