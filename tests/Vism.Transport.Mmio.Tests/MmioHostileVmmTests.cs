using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Vism.Abstractions;
using Vism.Native;
using Vism.Testing;
using Vism.Mmio;
using R = Vism.Mmio.MmioRegister;

namespace Vism.Transport.Mmio.Tests;

/// <summary>Serial: these tests count the process's open descriptors.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class DescriptorCountingCollection
{
    public const string Name = "descriptor counting";
}

/// <summary>A VMM that sends what no well-behaved VMM would: errors come back, nothing crashes,
/// no descriptor leaks, and the device keeps serving.</summary>
[Collection(DescriptorCountingCollection.Name)]
public sealed class MmioHostileVmmTests
{
    private static readonly TimeSpan Generous = TimeSpan.FromSeconds(20);
    private const ulong RamBase = 0x4000_0000;
    private const ulong RamSize = 1 << 20;

    private static byte[] Access(uint offset, uint width, ulong value = 0) => new RegisterAccess(offset, width, value).Encode();

    private static async Task AssertServedAgain(MmioHarness h)
    {
        await h.WaitUntil(() => !h.Transport.HasVmm, "the connection ended");
        using var next = RawVmm.Connect(h.SocketPath);
        HelloReply hello = next.Hello();
        Assert.Equal(Virtio.IsmDeviceId, hello.DeviceId);
    }

    [Fact]
    public async Task AMessageBeforeHelloIsRejectedAndTheConnectionEnds()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using (var peer = RawVmm.Connect(h.SocketPath))
        {
            peer.Send(MmioMessageType.Read, Access(R.MagicValue, 4));
            var (header, payload) = peer.Receive();
            Assert.Equal(MmioMessageType.Reject, header.Type);
            Assert.True(RejectMessage.TryDecode(payload, out RejectMessage reject));
            Assert.Equal(MmioStatus.HandshakeRequired, reject.Status);
            Assert.Contains("HELLO", reject.Reason);
            Assert.True(peer.IsClosedByDevice());
        }
        Assert.Equal(0, await h.OnLoop(() => h.Device.ConnectCount));
        await AssertServedAgain(h);
    }

    [Fact]
    public async Task APeerThatDoesNotSpeakTheProtocolIsRejected()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using (var peer = RawVmm.Connect(h.SocketPath))
        {
            // A vhost-user frontend's first message, GET_FEATURES: u32 request 1, u32 flags 1, u32 size 0.
            peer.SendRaw([1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            var (header, payload) = peer.Receive();
            Assert.Equal(MmioMessageType.Reject, header.Type);
            Assert.True(RejectMessage.TryDecode(payload, out RejectMessage reject));
            Assert.Contains("does not speak this protocol", reject.Reason);
            Assert.True(peer.IsClosedByDevice());
        }
        await AssertServedAgain(h);
    }

    [Fact]
    public async Task AnOversizedPayloadEndsTheConnectionAndReleasesTheDevice()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using (RawVmm peer = await h.ConnectRawAsync())
        {
            var header = new byte[MmioHeader.Length];
            new MmioHeader(MmioMessageType.Write, MmioMessageFlags.None, 1, 1 << 20).Write(header);
            peer.SendRaw(header);
            var (h2, payload) = peer.Receive();
            Assert.Equal(MmioMessageType.Reject, h2.Type);
            Assert.True(RejectMessage.TryDecode(payload, out RejectMessage reject));
            Assert.Equal(MmioStatus.BadMessage, reject.Status);
            Assert.True(peer.IsClosedByDevice());
        }
        await h.WaitUntil(() => h.Device.DisconnectCount == 1, "the device was released");
        await AssertServedAgain(h);
    }

    [Fact]
    public async Task MalformedPayloadsAreAnsweredBadMessageAndTheConnectionGoesOn()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using RawVmm peer = await h.ConnectRawAsync();

        Assert.Equal(MmioStatus.BadMessage, peer.Call(MmioMessageType.Read, new byte[4]).Header.Status);
        Assert.Equal(MmioStatus.BadMessage, peer.Call(MmioMessageType.Write, new byte[3], MmioMessageFlags.NeedReply).Header.Status);
        Assert.Equal(MmioStatus.BadMessage, peer.Call(MmioMessageType.Notify, new byte[8], MmioMessageFlags.NeedReply).Header.Status);
        Assert.Equal(MmioStatus.BadMessage, peer.Call(MmioMessageType.SetShmBase, new byte[15]).Header.Status);
        Assert.Equal(MmioStatus.BadMessage, peer.Call(MmioMessageType.SetIrqFd, new byte[12]).Header.Status);
        Assert.Equal(MmioStatus.BadMessage, peer.Call(MmioMessageType.SetMemTable, new byte[8]).Header.Status); // zero regions
        Assert.Equal(MmioStatus.HandshakeRequired, peer.Call(MmioMessageType.Hello, new HelloRequest(MmioProtocol.Magic, 1).Encode()).Header.Status);

        var (reply, value) = peer.Call(MmioMessageType.Read, Access(R.MagicValue, 4));
        Assert.Equal(MmioStatus.Ok, reply.Status);
        Assert.Equal(R.Magic, BinaryPrimitives.ReadUInt64LittleEndian(value));
        Assert.True(h.Counters.Get("mmio.protocol.error") >= 7);
    }

    [Theory]
    [InlineData((ushort)99)]
    [InlineData((ushort)MmioMessageType.Map)] // a device-to-VMM request sent the wrong way
    [InlineData((ushort)MmioMessageType.Reject)]
    public async Task UnknownMessageTypesAreAnsweredUnknownType(ushort type)
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using RawVmm peer = await h.ConnectRawAsync();
        Assert.Equal(MmioStatus.UnknownType, peer.Call((MmioMessageType)type, new byte[8]).Header.Status);
    }

    [Fact]
    public async Task AReplyThatAnswersNothingIsCountedAndIgnored()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using RawVmm peer = await h.ConnectRawAsync();
        using var block = new MemfdBlock(0x10000);
        Task<string?> map = h.Map(ShmId.Regions, 0, block, 0x10000, true);
        var (request, _) = peer.Receive(new List<SafeFileHandle>());

        peer.SendRaw(MmioFrame.Build(MmioMessageType.Map, MmioMessageFlags.Reply, request.Id + 1000, []));
        peer.SendRaw(MmioFrame.Build(MmioMessageType.Map, MmioMessageFlags.Reply, request.Id, []));

        Assert.Null(await map);
        Assert.Equal(1, h.Counters.Get("mmio.protocol.error"));
    }

    [Fact]
    public async Task BadRegisterAccessesAnswerBadAccessAndReadZero()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using RawVmm peer = await h.ConnectRawAsync();

        foreach ((uint offset, uint width) in new[] { (0x1000u, 4u), (0xffff_fff0u, 4u), (R.MagicValue, 3u), (R.MagicValue, 8u), (R.MagicValue, 0xffff_ffffu), (R.Version + 1, 4u) })
        {
            var (reply, value) = peer.Call(MmioMessageType.Read, Access(offset, width));
            Assert.Equal(MmioStatus.BadAccess, reply.Status);
            Assert.Equal(0ul, BinaryPrimitives.ReadUInt64LittleEndian(value));
        }
        Assert.Equal(MmioStatus.BadAccess, peer.Call(MmioMessageType.Write, Access(R.Status, 2, 1), MmioMessageFlags.NeedReply).Header.Status);
        Assert.Equal(MmioStatus.BadAccess, peer.Call(MmioMessageType.Write, Access(R.MagicValue, 4, 1), MmioMessageFlags.NeedReply).Header.Status);
        Assert.Equal(DeviceStatus.Reset, await h.OnLoop(() => h.Device.Status));
    }

    [Fact]
    public async Task HostileQueueSizesAndRingAddressesNeverStartAQueue()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using RawVmm peer = await h.ConnectRawAsync();
        using SafeFileHandle ram = MemFd.Create("hostile-ram", RamSize);
        Assert.Equal(MmioStatus.Ok, peer.Call(MmioMessageType.SetMemTable, SetMemTable.Encode([new MemoryRegion(RamBase, RamSize, 0)]), MmioMessageFlags.None, ram).Header.Status);
        void W(uint offset, ulong value) =>
            Assert.Equal(MmioStatus.Ok, peer.Call(MmioMessageType.Write, Access(offset, 4, value), MmioMessageFlags.NeedReply).Header.Status);
        W(R.Status, 1);
        W(R.Status, 3);
        W(R.DriverFeaturesSel, 1);
        W(R.DriverFeatures, 1); // VERSION_1
        W(R.Status, 11);
        W(R.QueueSel, 0);

        var hostile = new (uint Num, ulong Desc, ulong Avail, ulong Used)[]
        {
            (0, RamBase, RamBase + 0x1000, RamBase + 0x2000),                   // size 0
            (3, RamBase, RamBase + 0x1000, RamBase + 0x2000),                   // not a power of two
            (512, RamBase, RamBase + 0x2000, RamBase + 0x4000),                 // above QueueNumMax
            (0x1_0000, RamBase, RamBase + 0x1000, RamBase + 0x2000),            // beyond u16
            (64, RamBase + RamSize - 16, RamBase + 0x1000, RamBase + 0x2000),   // descriptor table runs out of RAM
            (64, RamBase, RamBase + 0x1000, 0x1000),                            // used ring below RAM
            (64, 0xffff_ffff_ffff_fff0, RamBase + 0x1000, RamBase + 0x2000),    // wraps past 2^64
            (64, RamBase + 8, RamBase + 0x1000, RamBase + 0x2000),              // misaligned descriptor table
        };
        foreach (var q in hostile)
        {
            W(R.QueueNum, q.Num);
            W(R.QueueDescLow, (uint)q.Desc);
            W(R.QueueDescHigh, (uint)(q.Desc >> 32));
            W(R.QueueDriverLow, (uint)q.Avail);
            W(R.QueueDriverHigh, (uint)(q.Avail >> 32));
            W(R.QueueDeviceLow, (uint)q.Used);
            W(R.QueueDeviceHigh, (uint)(q.Used >> 32));
            Assert.Equal(MmioStatus.BadAccess, peer.Call(MmioMessageType.Write, Access(R.QueueReady, 4, 1), MmioMessageFlags.NeedReply).Header.Status);
            var (_, ready) = peer.Call(MmioMessageType.Read, Access(R.QueueReady, 4));
            Assert.Equal(0ul, BinaryPrimitives.ReadUInt64LittleEndian(ready));
        }
        Assert.Empty(await h.OnLoop(() => h.Device.StartedQueues.ToArray()));
    }

    public static TheoryData<string, ulong[], int, MmioStatus> BadTables => new()
    {
        { "overlapping regions", [RamBase, RamSize, 0, RamBase + RamSize / 2, RamSize, 0], 2, MmioStatus.BadMemory },
        { "a region that wraps past 2^64", [0xffff_ffff_fff0_0000, RamSize, 0], 1, MmioStatus.BadMemory },
        { "an unaligned address", [RamBase + 8, RamSize - 4096, 0], 1, MmioStatus.BadMemory },
        { "an unaligned size", [RamBase, RamSize - 8, 0], 1, MmioStatus.BadMemory },
        { "a zero size", [RamBase, 0, 0], 1, MmioStatus.BadMemory },
        { "a range past the end of its file", [RamBase, RamSize, 4096], 1, MmioStatus.BadMemory },
        { "an fd offset that overflows", [RamBase, RamSize, 0xffff_ffff_ffff_f000], 1, MmioStatus.BadMemory },
        { "fewer descriptors than regions", [RamBase, 4096, 0, RamBase + RamSize, 4096, 0], 1, MmioStatus.BadFd },
        { "more descriptors than regions", [RamBase, 4096, 0], 2, MmioStatus.BadFd },
    };

    [Theory]
    [MemberData(nameof(BadTables))]
    public async Task BadMemoryTablesAreRefusedAndLeakNoDescriptor(string what, ulong[] fields, int fdCount, MmioStatus expected)
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        int before = Descriptors.Baseline();
        using (RawVmm peer = await h.ConnectRawAsync())
        {
            var regions = new List<MemoryRegion>();
            for (int i = 0; i + 2 < fields.Length; i += 3) regions.Add(new MemoryRegion(fields[i], fields[i + 1], fields[i + 2]));
            SafeFileHandle[] fds = [.. Enumerable.Range(0, fdCount).Select(_ => MemFd.Create("bad-table", RamSize))];
            try
            {
                var (reply, _) = peer.Call(MmioMessageType.SetMemTable, SetMemTable.Encode(regions), MmioMessageFlags.None, fds);
                Assert.True(expected == reply.Status, $"{what}: expected {expected}, got {reply.Status}");
            }
            finally
            {
                foreach (SafeFileHandle fd in fds) fd.Dispose();
            }
            // The device kept no guest RAM from the refused table.
            Assert.False(await h.OnLoop(() => h.Services.Memory.TryTranslate(RamBase, 1, out _)));
        }
        await h.WaitUntil(() => !h.Transport.HasVmm, "the connection ended");
        Descriptors.AssertBackTo(before);
    }

    [Fact]
    public async Task DescriptorsOnAMessageThatTakesNoneAreClosedAndRefused()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using RawVmm peer = await h.ConnectRawAsync();
        int before = Descriptors.Baseline();
        using (EventFd stray = EventFd.Create())
        {
            Assert.Equal(MmioStatus.BadFd, peer.Call(MmioMessageType.Read, Access(R.MagicValue, 4), MmioMessageFlags.None, stray.Handle).Header.Status);
            Assert.Equal(MmioStatus.BadFd, peer.Call(MmioMessageType.SetShmBase, new SetShmBase(ShmId.Regions, 0).Encode(), MmioMessageFlags.None, stray.Handle).Header.Status);
        }
        Descriptors.AssertBackTo(before); // the device closed the copies it received
    }

    [Fact]
    public async Task InterruptLinesMustExistAndBeEventfds()
    {
        await using MmioHarness h = await MmioHarness.StartAsync(new MmioOptions { Vectors = 2 });
        using RawVmm peer = await h.ConnectRawAsync();
        using EventFd irq = EventFd.Create();
        using SafeFileHandle notAnEventfd = MemFd.Create("not-irq", 4096);

        Assert.Equal(MmioStatus.BadRange, peer.Call(MmioMessageType.SetIrqFd, new SetIrqFd(3).Encode(), MmioMessageFlags.None, irq.Handle).Header.Status);
        Assert.Equal(MmioStatus.BadFd, peer.Call(MmioMessageType.SetIrqFd, new SetIrqFd(0).Encode(), MmioMessageFlags.None, notAnEventfd).Header.Status);
        Assert.Equal(MmioStatus.BadFd, peer.Call(MmioMessageType.SetIrqFd, new SetIrqFd(0).Encode(), MmioMessageFlags.None, irq.Handle, irq.Handle).Header.Status);
        Assert.Equal(MmioStatus.Ok, peer.Call(MmioMessageType.SetIrqFd, new SetIrqFd(2).Encode(), MmioMessageFlags.None, irq.Handle).Header.Status);

        await h.OnLoop(() => h.Services.SignalVector(1));
        Assert.Equal(1ul, irq.Wait(TimeSpan.FromSeconds(20)));
        // No descriptor: the line is disconnected and firings are dropped (counted).
        Assert.Equal(MmioStatus.Ok, peer.Call(MmioMessageType.SetIrqFd, new SetIrqFd(2).Encode()).Header.Status);
        await h.OnLoop(() => h.Services.SignalVector(1));
        Assert.Equal(1, h.Counters.Get("mmio.irq.dropped"));
    }

    private static MmioStatus WireCall(RawVmm peer, uint queue, params SafeHandle[] fds) =>
        peer.Call(MmioMessageType.SetQueueCallFd, new SetQueueCallFd(queue).Encode(), MmioMessageFlags.None, fds).Header.Status;

    private static uint InterruptStatus(RawVmm peer) =>
        BinaryPrimitives.ReadUInt32LittleEndian(peer.Call(MmioMessageType.Read, Access(R.InterruptStatus, 4)).Payload);

    [Fact]
    public async Task QueueCallFdsMustBeEventfdsForAQueueTheDeviceHas()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using RawVmm peer = await h.ConnectRawAsync();
        int before = Descriptors.Baseline();
        using (EventFd call = EventFd.Create())
        using (EventFd bell = EventFd.Create())
        using (SafeFileHandle notAnEventfd = MemFd.Create("not-a-call", 4096))
        {
            byte[] padded = new SetQueueCallFd(0).Encode();
            padded[4] = 1;
            Assert.Equal(MmioStatus.BadMessage, peer.Call(MmioMessageType.SetQueueCallFd, new byte[4], MmioMessageFlags.None, call.Handle).Header.Status);
            Assert.Equal(MmioStatus.BadMessage, peer.Call(MmioMessageType.SetQueueCallFd, padded, MmioMessageFlags.None, call.Handle).Header.Status);
            Assert.Equal(MmioStatus.BadRange, WireCall(peer, 2, call.Handle)); // the test device has queues 0 and 1
            Assert.Equal(MmioStatus.BadRange, WireCall(peer, uint.MaxValue, call.Handle));
            Assert.Equal(MmioStatus.BadFd, WireCall(peer, 0, notAnEventfd));
            Assert.Equal(MmioStatus.BadFd, WireCall(peer, 0, call.Handle, call.Handle));
            // A doorbell's eventfd is never a call eventfd too (each used buffer would ring it), nor the reverse.
            Assert.Equal(MmioStatus.Ok, Wire(peer, 0, bell.Handle));
            Assert.Equal(MmioStatus.BadFd, WireCall(peer, 0, bell.Handle));
            Assert.Equal(MmioStatus.Ok, WireCall(peer, 1, call.Handle));
            Assert.Equal(MmioStatus.BadFd, Wire(peer, 1, call.Handle));
            Assert.Equal(MmioStatus.Ok, WireCall(peer, 1)); // no descriptor unwires
            Assert.Equal(MmioStatus.Ok, WireCall(peer, 0));  // unwiring a queue that has none is OK
            Assert.Equal(MmioStatus.Ok, Wire(peer, 0));
        }
        Descriptors.AssertBackTo(before, "by refused or unwired SET_QUEUE_CALL_FD requests");
        Assert.True(h.Counters.Get("mmio.protocol.error") >= 8);
    }

    [Fact]
    public async Task AQueueWithACallEventfdIsSignalledThereAndLeavesInterruptStatusToTheVmm()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using EventFd line = EventFd.Create();
        using EventFd call = EventFd.Create();
        int before = Descriptors.Baseline();
        using (RawVmm peer = await h.ConnectRawAsync())
        {
            Assert.Equal(MmioStatus.Ok, peer.Call(MmioMessageType.SetIrqFd, new SetIrqFd(0).Encode(), MmioMessageFlags.None, line.Handle).Header.Status);
            Assert.Equal(MmioStatus.Ok, WireCall(peer, 1, call.Handle));

            // Queue 1 has a call eventfd: it alone is signalled, InterruptStatus stays clear.
            await h.OnLoop(() => { h.Services.SignalQueue(1); h.Services.SignalQueue(1); });
            Assert.Equal(2ul, call.Wait(TimeSpan.FromSeconds(20)));
            Assert.Equal(0u, InterruptStatus(peer));
            Assert.Equal(0ul, line.Drain());

            // Queue 0 has none: the standard line and InterruptStatus bit 0, as virtio-mmio has it.
            await h.OnLoop(() => h.Services.SignalQueue(0));
            Assert.Equal(1ul, line.Wait(TimeSpan.FromSeconds(20)));
            Assert.Equal(R.InterruptUsedBuffer, InterruptStatus(peer) & R.InterruptUsedBuffer);
            Assert.Equal(0ul, call.Drain());

            // Rewiring closes the device's old copy (no descriptor piles up); unwiring returns the
            // queue to the standard line.
            for (int i = 0; i < 100; i++)
                using (EventFd again = EventFd.Create())
                    Assert.Equal(MmioStatus.Ok, WireCall(peer, 1, again.Handle));
            Assert.Equal(MmioStatus.Ok, WireCall(peer, 1, call.Handle));
            Assert.Equal(MmioStatus.Ok, WireCall(peer, 1));
            await h.OnLoop(() => h.Services.SignalQueue(1));
            Assert.Equal(1ul, line.Wait(TimeSpan.FromSeconds(20)));
            Assert.Equal(0ul, call.Drain());

            // Wired again, then the VMM leaves: the device closes it with everything else.
            Assert.Equal(MmioStatus.Ok, WireCall(peer, 1, call.Handle));
        }
        await h.WaitUntil(() => !h.Transport.HasVmm, "the VMM left");
        Descriptors.AssertBackTo(before, "by call eventfds of a VMM that left");
    }

    private static MmioStatus Wire(RawVmm peer, ulong offset, params SafeHandle[] fds) =>
        peer.Call(MmioMessageType.SetNotifyFd, new SetNotifyFd(offset).Encode(), MmioMessageFlags.None, fds).Header.Status;

    [Fact]
    public async Task NotifyDoorbellsMustBeEventfdsForARegionSlot()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using RawVmm peer = await h.ConnectRawAsync();
        int before = Descriptors.Baseline();
        using (EventFd bell = EventFd.Create())
        using (SafeFileHandle notAnEventfd = MemFd.Create("not-a-doorbell", 4096))
        {
            ulong slots = (ulong)h.Device.Description.MaxRegions; // 16 slots of one byte each
            Assert.Equal(MmioStatus.BadMessage, peer.Call(MmioMessageType.SetNotifyFd, new byte[4], MmioMessageFlags.None, bell.Handle).Header.Status);
            Assert.Equal(MmioStatus.BadRange, Wire(peer, slots, bell.Handle));                      // inside the window, past the slots
            Assert.Equal(MmioStatus.BadRange, Wire(peer, MmioTestDevice.NotifyLength, bell.Handle)); // past the window
            Assert.Equal(MmioStatus.BadRange, Wire(peer, ulong.MaxValue, bell.Handle));
            Assert.Equal(MmioStatus.BadFd, Wire(peer, 0, notAnEventfd));
            Assert.Equal(MmioStatus.BadFd, Wire(peer, 0, bell.Handle, bell.Handle));
            bell.Signal();
            Assert.Equal(MmioStatus.Ok, peer.Call(MmioMessageType.Read, Access(R.MagicValue, 4)).Header.Status);
            Assert.Empty(h.Device.NotifyWrites);
        }
        Descriptors.AssertBackTo(before, "by refused SET_NOTIFY_FD requests");
    }

    [Fact]
    public async Task RewiredDoorbellsCloseTheOldDescriptorAndTheirNumberIsCappedAtTheSlots()
    {
        // Slots of 8 bytes: a VMM could name 8 offsets per slot; the device keeps at most one
        // doorbell per slot in all, whatever offsets it is asked for.
        await using MmioHarness h = await MmioHarness.StartAsync(notifySize: 8);
        using RawVmm peer = await h.ConnectRawAsync();
        int slots = h.Device.Description.MaxRegions;
        int before = Descriptors.Baseline();
        for (int i = 0; i < 300; i++)
            using (EventFd bell = EventFd.Create())
                Assert.Equal(MmioStatus.Ok, Wire(peer, 0, bell.Handle));
        var bells = new List<EventFd>();
        for (int i = 1; i < slots; i++)
        {
            bells.Add(EventFd.Create());
            Assert.Equal(MmioStatus.Ok, Wire(peer, (ulong)i, bells[^1].Handle)); // offsets 1..15, all in slots 0 and 1
        }
        using (EventFd extra = EventFd.Create())
        {
            Assert.Equal(MmioStatus.BadRange, Wire(peer, (ulong)slots, extra.Handle));
            Assert.Equal(MmioStatus.Ok, Wire(peer, 0, extra.Handle)); // rewiring a wired offset is always allowed
        }
        // Unwiring (no descriptor) frees a place.
        Assert.Equal(MmioStatus.Ok, Wire(peer, 1));
        using (EventFd again = EventFd.Create())
            Assert.Equal(MmioStatus.Ok, Wire(peer, (ulong)slots, again.Handle));
        foreach (EventFd bell in bells) bell.Dispose();
        for (ulong offset = 0; offset <= (ulong)slots; offset++)
            Assert.Equal(MmioStatus.Ok, Wire(peer, offset));
        Descriptors.AssertBackTo(before, "by rewired or unwired doorbells");
    }

    [Fact]
    public async Task AnEventfdIsNeverBothAnInterruptLineAndADoorbell()
    {
        await using MmioHarness h = await MmioHarness.StartAsync(new MmioOptions { Vectors = 2 });
        using RawVmm peer = await h.ConnectRawAsync();
        using EventFd x = EventFd.Create();
        using EventFd y = EventFd.Create();
        Assert.Equal(MmioStatus.Ok, peer.Call(MmioMessageType.SetIrqFd, new SetIrqFd(1).Encode(), MmioMessageFlags.None, x.Handle).Header.Status);
        Assert.Equal(MmioStatus.BadFd, Wire(peer, 0, x.Handle));
        Assert.Equal(MmioStatus.Ok, Wire(peer, 0, y.Handle));
        Assert.Equal(MmioStatus.BadFd, peer.Call(MmioMessageType.SetIrqFd, new SetIrqFd(2).Encode(), MmioMessageFlags.None, y.Handle).Header.Status);
        // Wiring the same kind twice is fine (one eventfd for several lines, or a rewire).
        Assert.Equal(MmioStatus.Ok, peer.Call(MmioMessageType.SetIrqFd, new SetIrqFd(2).Encode(), MmioMessageFlags.None, x.Handle).Header.Status);
        Assert.Equal(MmioStatus.Ok, Wire(peer, 0, y.Handle));
        // Unwired, an eventfd may take the other role.
        Assert.Equal(MmioStatus.Ok, Wire(peer, 0));
        Assert.Equal(MmioStatus.Ok, peer.Call(MmioMessageType.SetIrqFd, new SetIrqFd(0).Encode(), MmioMessageFlags.None, y.Handle).Header.Status);
        Assert.True(h.Counters.Get("mmio.protocol.error") >= 2);
    }

    [Fact]
    public async Task ADeviceInterruptLineCannotBeAnotherDevicesDoorbellUntilItsVmmLeaves()
    {
        // One VMM with two devices: A's vector as B's doorbell would make every event of A a
        // notify by B, which, on a region they share, is another event of A: a loop for ever.
        await using MmioHarness a = await MmioHarness.StartAsync(new MmioOptions { Vectors = 1 });
        await using MmioHarness b = await MmioHarness.StartAsync(new MmioOptions { Vectors = 1 });
        using RawVmm vmmB = await b.ConnectRawAsync();
        using EventFd x = EventFd.Create();
        using (RawVmm vmmA = await a.ConnectRawAsync())
        {
            Assert.Equal(MmioStatus.Ok, vmmA.Call(MmioMessageType.SetIrqFd, new SetIrqFd(1).Encode(), MmioMessageFlags.None, x.Handle).Header.Status);
            Assert.Equal(MmioStatus.BadFd, Wire(vmmB, 0, x.Handle));
        }
        await a.WaitUntil(() => !a.Transport.HasVmm, "A's VMM left");
        Assert.Equal(MmioStatus.Ok, Wire(vmmB, 0, x.Handle)); // A closed its line: x is free
    }

    [Fact]
    public async Task SignalsThatGatherBeforeTheLoopReadsADoorbellAreOneNotify()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using RawVmm peer = await h.ConnectRawAsync();
        using EventFd bell = EventFd.Create();
        Assert.Equal(MmioStatus.Ok, Wire(peer, 5, bell.Handle));

        using var started = new ManualResetEventSlim();
        using var gate = new ManualResetEventSlim();
        Task held = h.OnLoop(() =>
        {
            started.Set();
            gate.Wait();
        });
        Assert.True(started.Wait(Generous));
        for (int i = 0; i < 1000; i++) bell.Signal();
        gate.Set();
        await held;
        await h.WaitUntil(() => !h.Device.NotifyWrites.IsEmpty, "the doorbell was read");
        Assert.Equal(MmioStatus.Ok, peer.Call(MmioMessageType.Read, Access(R.MagicValue, 4)).Header.Status);
        Assert.Equal([5ul], h.Device.NotifyWrites);
    }

    [Fact]
    public async Task ADoorbellStormLeavesTheSocketServed()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using RawVmm peer = await h.ConnectRawAsync();
        using EventFd bell = EventFd.Create();
        Assert.Equal(MmioStatus.Ok, Wire(peer, 2, bell.Handle));
        long signals = 0;
        using var stop = new CancellationTokenSource();
        Task storm = Task.Run(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                bell.Signal();
                Interlocked.Increment(ref signals);
            }
        });
        try
        {
            Assert.True(SpinWait.SpinUntil(() => Interlocked.Read(ref signals) >= 10_000, Generous), "the storm started");
            for (int i = 0; i < 200; i++)
                Assert.Equal(MmioStatus.Ok, peer.Call(MmioMessageType.Read, Access(R.MagicValue, 4)).Header.Status);
        }
        finally
        {
            stop.Cancel();
            await storm;
        }
        Assert.Equal(MmioStatus.Ok, peer.Call(MmioMessageType.Read, Access(R.MagicValue, 4)).Header.Status);
        ulong[] writes = [.. h.Device.NotifyWrites];
        Assert.NotEmpty(writes);
        Assert.All(writes, o => Assert.Equal(2ul, o));
        Assert.InRange(writes.Length, 1, signals);
    }

    [Fact]
    public async Task ShmBaseForAWindowTheDeviceLacksOrUnalignedIsRefused()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using RawVmm peer = await h.ConnectRawAsync();
        Assert.Equal(MmioStatus.BadRange, peer.Call(MmioMessageType.SetShmBase, new SetShmBase((ShmId)7, 0x1_0000_0000).Encode()).Header.Status);
        Assert.Equal(MmioStatus.BadRange, peer.Call(MmioMessageType.SetShmBase, new SetShmBase(ShmId.Regions, 0x1_0000_0100).Encode()).Header.Status);
        Assert.Equal(MmioStatus.BadRange, peer.Call(MmioMessageType.SetShmBase, new SetShmBase(ShmId.Regions, ulong.MaxValue - 4095).Encode()).Header.Status);
    }

    [Fact]
    public async Task AVmmThatLeavesMidMessageReleasesTheDeviceAndEveryDescriptor()
    {
        await using MmioHarness h = await MmioHarness.StartAsync(new MmioOptions { Vectors = 1 });
        int before = Descriptors.Baseline();
        using (RawVmm peer = await h.ConnectRawAsync())
        {
            using SafeFileHandle ram = MemFd.Create("ram", RamSize);
            using EventFd irq = EventFd.Create();
            using EventFd vector = EventFd.Create();
            Assert.Equal(MmioStatus.Ok, peer.Call(MmioMessageType.SetMemTable, SetMemTable.Encode([new MemoryRegion(RamBase, RamSize, 0)]), MmioMessageFlags.None, ram).Header.Status);
            Assert.Equal(MmioStatus.Ok, peer.Call(MmioMessageType.SetIrqFd, new SetIrqFd(0).Encode(), MmioMessageFlags.None, irq.Handle).Header.Status);
            Assert.Equal(MmioStatus.Ok, peer.Call(MmioMessageType.SetIrqFd, new SetIrqFd(1).Encode(), MmioMessageFlags.None, vector.Handle).Header.Status);
            using EventFd bell = EventFd.Create();
            Assert.Equal(MmioStatus.Ok, Wire(peer, 3, bell.Handle));
            byte[] frame = MmioFrame.Build(MmioMessageType.Write, MmioMessageFlags.None, 9, Access(R.Status, 4, 1));
            peer.SendRaw(frame[..20]); // header and a piece of the payload, then gone
        }
        await h.WaitUntil(() => h.Device.DisconnectCount == 1, "the device was released");
        await h.WaitUntil(() => !h.Transport.HasVmm, "the connection ended");
        Descriptors.AssertBackTo(before);
        await AssertServedAgain(h);
    }

    [Fact]
    public async Task AVmmThatStopsReadingItsSocketIsDroppedInsteadOfStallingTheLoop()
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        using RawVmm peer = await h.ConnectRawAsync();
        byte[] read = MmioFrame.Build(MmioMessageType.Read, MmioMessageFlags.None, 1, Access(R.MagicValue, 4));
        byte[] burst = [.. Enumerable.Range(0, 256).SelectMany(_ => read)];

        try
        {
            for (int i = 0; i < 400 && h.Transport.HasVmm; i++) peer.SendRaw(burst); // never reads a reply
        }
        catch (PosixException)
        {
            // The device hung up on us: that is the point.
        }

        await h.WaitUntil(() => !h.Transport.HasVmm, "the device dropped the VMM");
        Assert.True(h.Log.Contains("does not read its socket"));
        Assert.Equal(1, await h.OnLoop(() => h.Device.DisconnectCount));
    }
}
