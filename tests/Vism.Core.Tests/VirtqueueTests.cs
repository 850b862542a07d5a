using System.Buffers.Binary;
using Vism.Core.Virtqueues;

namespace Vism.Core.Tests;

/// <summary>The split virtqueue engine against well-formed and hostile rings, through a running device.</summary>
public sealed class VirtqueueTests
{
    private const ushort Next = DriverQueue.DescNext;
    private const ushort Write = DriverQueue.DescWrite;
    private const ushort Indirect = DriverQueue.DescIndirect;

    /// <summary>A hostile ring: what the driver writes, and the fault the device must report.</summary>
    public sealed record Hostile(string Name, string Fault, Action<DriverQueue, GuestRam> Build, bool Indirect = true)
    {
        public override string ToString() => Name;
    }

    private static ulong Buffer(GuestRam ram, uint length = 64) => ram.Allocate(length, 16);

    public static TheoryData<Hostile> HostileRings() => new()
    {
        new("two descriptors pointing at each other", "ring.loop", (q, ram) =>
        {
            ulong b = Buffer(ram);
            q.RawDescriptor(0, b, 8, Next, 1);
            q.RawDescriptor(1, b, 8, Next, 0);
            q.RawPublish(0);
        }),
        new("a descriptor pointing at itself", "ring.loop", (q, ram) =>
        {
            q.RawDescriptor(0, Buffer(ram), 8, Next, 0);
            q.RawPublish(0);
        }),
        new("next beyond the table", "ring.next-out-of-range", (q, ram) =>
        {
            q.RawDescriptor(0, Buffer(ram), 8, Next, q.Size);
            q.RawPublish(0);
        }),
        new("head beyond the table", "ring.head-out-of-range", (q, ram) => q.RawPublish(q.Size)),
        new("available index more than a ring ahead", "ring.avail-index-jump", (q, ram) =>
            q.RawSetAvailIndex((ushort)(q.AvailIndex + q.Size + 1))),
        new("buffer below guest memory", "ring.buffer-unmapped", (q, ram) =>
        {
            q.RawDescriptor(0, 0x1000, 8, 0, 0);
            q.RawPublish(0);
        }),
        new("buffer running past the end of guest memory", "ring.buffer-unmapped", (q, ram) =>
        {
            q.RawDescriptor(0, ram.GuestBase + ram.Size - 8, 16, 0, 0);
            q.RawPublish(0);
        }),
        new("buffer whose end wraps around 2^64", "ring.buffer-unmapped", (q, ram) =>
        {
            q.RawDescriptor(0, ulong.MaxValue - 4, 16, 0, 0);
            q.RawPublish(0);
        }),
        new("readable descriptor after a writable one", "ring.read-after-write", (q, ram) =>
        {
            ulong b = Buffer(ram);
            q.RawDescriptor(0, b, 8, Write | Next, 1);
            q.RawDescriptor(1, b, 8, 0, 0);
            q.RawPublish(0);
        }),
        new("indirect table inside an indirect table", "ring.indirect-in-indirect", (q, ram) =>
        {
            ulong table = ram.Allocate(32, 16);
            ulong inner = ram.Allocate(16, 16);
            q.RawDescriptorAt(inner, 0, Buffer(ram), 8, 0, 0);
            q.RawDescriptorAt(table, 0, Buffer(ram), 2, Next, 1);
            q.RawDescriptorAt(table, 1, inner, 16, Indirect, 0);
            q.RawDescriptor(0, table, 32, Indirect, 0);
            q.RawPublish(0);
        }),
        new("indirect table whose length is not a multiple of 16", "ring.indirect-bad-size", (q, ram) =>
        {
            ulong table = ram.Allocate(32, 16);
            q.RawDescriptor(0, table, 24, Indirect, 0);
            q.RawPublish(0);
        }),
        new("empty indirect table", "ring.indirect-bad-size", (q, ram) =>
        {
            q.RawDescriptor(0, ram.Allocate(16, 16), 0, Indirect, 0);
            q.RawPublish(0);
        }),
        new("indirect descriptor with NEXT", "ring.indirect-with-next", (q, ram) =>
        {
            ulong table = ram.Allocate(16, 16);
            q.RawDescriptorAt(table, 0, Buffer(ram), 8, 0, 0);
            q.RawDescriptor(0, table, 16, Indirect | Next, 1);
            q.RawDescriptor(1, Buffer(ram), 8, Write, 0);
            q.RawPublish(0);
        }),
        new("indirect table outside guest memory", "ring.indirect-unmapped", (q, ram) =>
        {
            q.RawDescriptor(0, ram.GuestBase + ram.Size, 32, Indirect, 0);
            q.RawPublish(0);
        }),
        new("loop inside an indirect table", "ring.loop", (q, ram) =>
        {
            ulong table = ram.Allocate(32, 16);
            ulong b = Buffer(ram);
            q.RawDescriptorAt(table, 0, b, 2, Next, 1);
            q.RawDescriptorAt(table, 1, b, 2, Next, 0);
            q.RawDescriptor(0, table, 32, Indirect, 0);
            q.RawPublish(0);
        }),
        new("next beyond an indirect table", "ring.next-out-of-range", (q, ram) =>
        {
            ulong table = ram.Allocate(32, 16);
            q.RawDescriptorAt(table, 0, Buffer(ram), 2, Next, 2);
            q.RawDescriptor(0, table, 32, Indirect, 0);
            q.RawPublish(0);
        }),
        new("indirect table with one entry more than the queue size", "ring.chain-over-queue-size", (q, ram) =>
        {
            ulong table = ram.Allocate(16UL * (q.Size + 1u), 16); // zeroes: never read
            q.RawDescriptor(0, table, 16u * (q.Size + 1u), Indirect, 0);
            q.RawPublish(0);
        }),
        new("direct descriptors and an indirect table together longer than the queue size", "ring.chain-over-queue-size", (q, ram) =>
        {
            ulong table = ram.Allocate(16UL * q.Size, 16);
            q.RawDescriptor(0, Buffer(ram), 2, Next, 1);
            q.RawDescriptor(1, table, 16u * q.Size, Indirect, 0);
            q.RawPublish(0);
        }),
        new("indirect descriptor without INDIRECT_DESC negotiated", "ring.indirect-not-negotiated", (q, ram) =>
        {
            ulong table = ram.Allocate(16, 16);
            q.RawDescriptorAt(table, 0, Buffer(ram), 8, 0, 0);
            q.RawDescriptor(0, table, 16, Indirect, 0);
            q.RawPublish(0);
        }, Indirect: false),
    };

    [Theory]
    [MemberData(nameof(HostileRings))]
    public void AHostileControlqRingMarksOnlyThatDeviceDeviceNeedsReset(Hostile ring)
    {
        using var rig = new Rig(loops: 1); // both devices share one loop: the fault must not stop it
        Peer victim = rig.AddClient("victim", options: new IsmClientOptions { IndirectDesc = ring.Indirect });
        Peer bystander = rig.AddClient("bystander");
        AllocReply shared = Rig.Share(bystander, victim).Region;
        DriverQueue q = victim.C.Driver.Queues[Virtio.ControlQueue];
        ushort usedBefore = q.UsedIndex;

        ring.Build(q, victim.T.Ram);
        victim.T.Kick(Virtio.ControlQueue);

        Assert.True(victim.T.WaitConfigChange(Rig.Wait));
        Assert.True((victim.T.ReadStatus() & DeviceStatus.DeviceNeedsReset) != 0);
        Assert.Equal(1, victim.Counters.Get("err." + ring.Fault));
        Assert.True(rig.Logs.Contains(ring.Fault, Microsoft.Extensions.Logging.LogLevel.Error));
        Assert.Equal(usedBefore, q.UsedIndex);

        // Further kicks are ignored, the other device on the same loop keeps working...
        victim.T.Kick(Virtio.ControlQueue);
        Assert.True(bystander.C.Alloc(4096).Ok);
        Assert.Equal(0, bystander.Counters.Sum("err."));
        // ...and a reset brings the device back, its old attachment released.
        using IsmClient again = IsmClient.Start(victim.T);
        Assert.True(again.Alloc(4096).Ok);
        Assert.Single(rig.Host.Snapshot().Regions.Single(r => r.TokenHint == Rig.Hint(shared.Token)).References);
    }

    [Fact]
    public void RandomGarbageInTheControlqIsAnsweredOrResetsTheDeviceAndNeverEscapes()
    {
        using var rig = new Rig(loops: 1);
        Peer victim = rig.AddClient("victim");
        Peer bystander = rig.AddClient("bystander");
        var random = new Random(20260101);
        GuestRam ram = victim.T.Ram;
        ulong scratch = ram.Allocate(4096, 16);
        int answered = 0, resets = 0;
        for (int round = 0; round < 100; round++) // each round starts a new client, which takes ~20 KiB of the 4 MiB guest RAM
        {
            IsmClient client = victim.C;
            DriverQueue q = client.Driver.Queues[0];
            random.NextBytes(ram.Span(scratch, 4096));
            for (int d = 0; d < q.Size; d++)
            {
                ulong address = random.Next(4) switch
                {
                    0 => (ulong)random.NextInt64(),
                    _ => scratch + (ulong)random.Next(4096),
                };
                ushort flags = (ushort)(random.Next(8) & (round % 3 == 0 ? 7 : 3));
                q.RawDescriptor(d, address, (uint)random.Next(64), flags, (ushort)random.Next(q.Size + 2));
            }
            ushort before = q.UsedIndex;
            q.RawPublish((ushort)random.Next(q.Size + 1));
            victim.T.Kick(0);
            Assert.True(WaitUntil(() => q.UsedIndex != before || (victim.Device.Status & DeviceStatus.DeviceNeedsReset) != 0), $"round {round}");
            if ((victim.Device.Status & DeviceStatus.DeviceNeedsReset) != 0)
            {
                resets++;
                victim.Reconnect();
            }
            else
            {
                answered++;
                victim.Reconnect(); // the driver's own bookkeeping no longer matches what it wrote
            }
        }
        Assert.True(resets > 0 && answered > 0, $"{resets} resets, {answered} answered");
        Assert.True(bystander.C.Alloc(4096).Ok);
        Assert.Equal(0, bystander.Counters.Sum("err."));
    }

    [Fact]
    public void AChainOfOnlyZeroLengthDescriptorsIsAnsweredWithoutAnAck()
    {
        using var rig = new Rig();
        Peer p = rig.AddClient("p");
        DriverQueue q = p.C.Driver.Queues[Virtio.ControlQueue];
        ulong b = p.T.Ram.Allocate(16, 16);
        q.RawDescriptor(5, b, 0, Next, 6);
        q.RawDescriptor(6, b, 0, Write, 0);
        ushort before = q.UsedIndex;
        q.RawPublish(5);
        p.T.Kick(Virtio.ControlQueue);
        Assert.True(WaitUntil(() => q.UsedIndex != before));
        Assert.Equal(1, p.Counters.Get("err.ctrl.no-ack-space"));
        Assert.Equal(DeviceStatus.DriverOk, p.T.ReadStatus() & (DeviceStatus.DriverOk | DeviceStatus.DeviceNeedsReset));
    }

    public static TheoryData<string, ushort, ulong, ulong, ulong> BadLayouts() => new()
    {
        { "size 0", 0, 0, 0x1000, 0x2000 },
        { "size not a power of two", 3, 0, 0x1000, 0x2000 },
        { "size above the maximum", 512, 0, 0x4000, 0x8000 },
        { "descriptor table not 16-byte aligned", 8, 8, 0x1000, 0x2000 },
        { "available ring not 2-byte aligned", 8, 0, 0x1001, 0x2000 },
        { "used ring not 4-byte aligned", 8, 0, 0x1000, 0x2002 },
        { "descriptor table outside guest memory", 8, 0x4000_0000_0000, 0x1000, 0x2000 },
        { "used ring running past the end of guest memory", 8, 0, 0x1000, (4 << 20) - 16 },
    };

    [Theory]
    [MemberData(nameof(BadLayouts))]
    public void AQueueWithABadLayoutIsRefused(string name, ushort size, ulong desc, ulong avail, ulong used)
    {
        using var rig = new Rig();
        Peer p = rig.AddDevice("p", RecordingEventChannel.Irq());
        p.Connect(startClient: false);
        ulong ram = p.T.Ram.GuestBase;
        var settings = new QueueSettings(size, desc >= 0x1000_0000 ? desc : ram + desc, ram + avail, ram + used);
        Assert.False(p.T.Call(d => d.TryStartQueue(0, settings)), name);
        Assert.False(p.T.Call(d => d.IsQueueStarted(0)));
        Assert.Equal(1, p.Counters.Get("err.queue.bad-layout"));
        Assert.False(p.T.Call(d => d.TryStartQueue(7, new QueueSettings(8, ram, ram + 0x1000, ram + 0x2000))));
        Assert.Equal(1, p.Counters.Get("err.queue.bad-index"));
    }

    [Fact]
    public void RequestsScatteredOverManyBuffersAreGathered()
    {
        using var rig = new Rig();
        Peer p = rig.AddClient("p", options: new IsmClientOptions { IndirectDesc = false });
        GuestRam ram = p.T.Ram;
        ulong header = ram.Allocate(2), size1 = ram.Allocate(3), size2 = ram.Allocate(5);
        ulong ack = ram.Allocate(1), reply1 = ram.Allocate(4), reply2 = ram.Allocate(12);
        ram.Span(header, 2).Clear(); // class ALLOC, command 0
        Span<byte> size = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(size, 8192);
        size[..3].CopyTo(ram.Span(size1, 3));
        size[3..].CopyTo(ram.Span(size2, 5));

        DriverQueue q = p.C.Driver.Queues[Virtio.ControlQueue];
        q.Add([new(header, 2), new(size1, 3), new(size2, 5)], [new(ack, 1), new(reply1, 4), new(reply2, 12)]);
        p.C.Driver.KickIfNeeded(Virtio.ControlQueue);
        Assert.True(p.C.Driver.WaitUsed(Virtio.ControlQueue, Rig.Wait, out UsedElement used));

        Assert.Equal(17u, used.Written);
        Assert.Equal(IsmControl.AckOk, ram.Span(ack, 1)[0]);
        byte[] reply = [.. ram.Span(reply1, 4), .. ram.Span(reply2, 12)];
        ulong token = BinaryPrimitives.ReadUInt64LittleEndian(reply);
        Assert.Equal(rig.Host.Snapshot().Regions.Single().TokenHint, Rig.Hint(token));
        Assert.Equal(8192UL, p.Memory.Usage.Used);
    }

    [Fact]
    public void RequestsThroughIndirectTablesWork()
    {
        using var rig = new Rig();
        Peer p = rig.AddClient("p", options: new IsmClientOptions { UseIndirect = true });
        Assert.True(p.C.Driver.Has(Features.RingIndirectDesc));
        for (int i = 0; i < 3 * p.C.Driver.Queues[0].Size; i++) // more requests than descriptors: tables are reused
        {
            AllocReply r = p.C.Alloc(4096);
            Assert.True(r.Ok);
            Assert.Equal(IsmControl.AckOk, p.C.Detach(r.Offset));
        }
    }

    [Fact]
    public void WithEventIdxTheDeviceInterruptsOnlyWhenUsedEventIsReached()
    {
        using var rig = new Rig();
        Peer p = rig.AddClient("p");
        Assert.True(p.C.Driver.Has(Features.RingEventIdx));
        DriverQueue q = p.C.Driver.Queues[Virtio.ControlQueue];
        p.T.DrainQueueSignals(0);

        // Ask for an interrupt only after three more used entries.
        q.RawSetUsedEvent((ushort)(q.UsedIndex + 2));
        ulong req = p.T.Ram.Allocate(2), ack = p.T.Ram.Allocate(1);
        p.T.Ram.Span(req, 2).Fill(0xee); // unknown class: an ERR ack, nothing else
        for (int i = 0; i < 3; i++)
        {
            ushort before = q.UsedIndex;
            q.Add([new(req, 2)], [new(ack, 1)]);
            p.T.Kick(0);
            Assert.True(WaitUntil(() => q.UsedIndex != before));
            p.Settle();
            Assert.Equal(i == 2 ? 1UL : 0UL, p.T.DrainQueueSignals(0));
        }
        // The device asked to be kicked for the next entry.
        Assert.Equal(q.AvailIndex, q.AvailEvent);
    }

    [Fact]
    public void WithoutEventIdxNoInterruptSuppressesUsedBufferInterrupts()
    {
        using var rig = new Rig();
        Peer p = rig.AddClient("p", options: new IsmClientOptions { EventIdx = false });
        Assert.False(p.C.Driver.Has(Features.RingEventIdx));
        DriverQueue q = p.C.Driver.Queues[Virtio.ControlQueue];
        p.T.DrainQueueSignals(0);
        q.SuppressInterrupts(true);
        ulong req = p.T.Ram.Allocate(2), ack = p.T.Ram.Allocate(1);
        p.T.Ram.Span(req, 2).Fill(0xee);
        ushort before = q.UsedIndex;
        q.Add([new(req, 2)], [new(ack, 1)]);
        p.T.Kick(0);
        Assert.True(WaitUntil(() => q.UsedIndex != before));
        p.Settle();
        Assert.Equal(0UL, p.T.DrainQueueSignals(0));
        Assert.Equal(1, p.Counters.Get("queue.interrupt-suppressed"));

        q.SuppressInterrupts(false);
        Assert.True(q.TryTakeUsed(out _));
        Assert.True(p.C.Alloc(4096).Ok);
    }

    [Fact]
    public void EngineAndDriverQueueAgreeAcross16BitIndexWrapAround()
    {
        using var ram = new GuestRam();
        var driver = new DriverQueue(ram, 0, 4, eventIdx: true, maxIndirect: 4);
        var device = new SplitQueue(0);
        Assert.Null(SplitQueue.Validate(driver.Settings, 256, ram));
        device.Configure(driver.Settings, eventIdx: true, indirectDesc: true);
        ulong[] buffers = [ram.Allocate(64), ram.Allocate(64), ram.Allocate(64)];

        for (int i = 0; i < 70_000; i++)
        {
            bool indirect = i % 3 == 0;
            uint len = (uint)(i % 60) + 1;
            ushort head = driver.Add([new(buffers[0], len), new(buffers[1], 4)], [new(buffers[2], 64 - len)], indirect);
            Assert.Equal(PopResult.Chain, device.TryPop(ram, out DescriptorChain? chain, out string? fault));
            Assert.Null(fault);
            Assert.Equal(head, chain!.Head);
            Assert.Equal([new GuestBuffer(buffers[0], len), new GuestBuffer(buffers[1], 4)], chain.Readable);
            Assert.Equal([new GuestBuffer(buffers[2], 64 - len)], chain.Writable);
            Assert.True(device.TryAddUsed(ram, chain.Head, (uint)i % 7, out _, out _));
            Assert.True(driver.TryTakeUsed(out UsedElement used));
            Assert.Equal(new UsedElement(head, (uint)i % 7), used);
        }
        Assert.Equal(PopResult.Empty, device.TryPop(ram, out _, out _));
        Assert.Equal(4, driver.FreeDescriptors);
        Assert.Equal(unchecked((ushort)70_000), device.NextAvail);
    }

    [Fact]
    public void AChainLongerThan2ToThe32BytesIsARingFault()
    {
        using var ram = new GuestRam();
        var memory = new PhantomMemory(ram, 0x100_0000_0000, 1UL << 34);
        var driver = new DriverQueue(ram, 0, 8, eventIdx: false);
        var device = new SplitQueue(0);
        device.Configure(driver.Settings, eventIdx: false, indirectDesc: false);

        // Exactly 2^32 - 1 bytes is accepted...
        driver.Add([new(0x100_0000_0000, uint.MaxValue)], []);
        Assert.Equal(PopResult.Chain, device.TryPop(memory, out DescriptorChain? ok, out _));
        Assert.Equal(uint.MaxValue, ok!.ReadableLength);
        // ...one byte more is not.
        driver.Add([new(0x100_0000_0000, uint.MaxValue)], [new(0x100_0000_0000, 1)]);
        Assert.Equal(PopResult.Fault, device.TryPop(memory, out _, out string? fault));
        Assert.Equal("ring.chain-too-long", fault);
    }

    /// <summary>Virtio's "a driver MUST NOT create a descriptor chain longer than the Queue Size":
    /// a chain of exactly the queue size is walked, one descriptor more is a fault, and an indirect
    /// table that is too long is refused from its length without reading any entry (issue 13.4: a
    /// 32,768-entry table took ~1.3 ms to walk).</summary>
    [Theory]
    [InlineData(0, 8, null, 9)]          // one indirect table of the queue size: the pointer and 8 entries
    [InlineData(0, 9, "ring.chain-over-queue-size", 1)]
    [InlineData(0, 32768, "ring.chain-over-queue-size", 1)]
    [InlineData(3, 5, null, 9)]          // 3 direct buffers, then a table of 5
    [InlineData(3, 6, "ring.chain-over-queue-size", 4)]
    [InlineData(8, 0, null, 8)]          // a direct chain through the whole table
    public void AChainHoldsAtMostTheQueueSizeAndALongerTableIsRefusedUnread(int direct, int entries, string? fault, long walked)
    {
        using var ram = new GuestRam();
        var driver = new DriverQueue(ram, 0, 8, eventIdx: false);
        var device = new SplitQueue(0);
        device.Configure(driver.Settings, eventIdx: false, indirectDesc: true);
        ulong buffer = ram.Allocate(64, 16);
        ulong table = ram.Allocate(16UL * (ulong)Math.Max(entries, 1), 16);
        for (int i = 0; i < entries; i++)
            driver.RawDescriptorAt(table, i, buffer, 1, (ushort)(i + 1 < entries ? Next : Write), (ushort)(i + 1));
        for (int i = 0; i < direct; i++)
        {
            bool last = i + 1 == direct && entries == 0;
            driver.RawDescriptor(i, buffer, 1, (ushort)(last ? Write : Next), (ushort)(i + 1));
        }
        if (entries > 0)
            driver.RawDescriptor(direct, table, (uint)(16 * entries), Indirect, 0);
        driver.RawPublish(0);

        PopResult result = device.TryPop(ram, out DescriptorChain? chain, out string? why);
        Assert.Equal(fault, why);
        Assert.Equal(fault is null ? PopResult.Chain : PopResult.Fault, result);
        Assert.Equal(walked, device.DescriptorsWalked);
        if (fault is null)
            Assert.Equal(direct + entries, chain!.Readable.Count + chain.Writable.Count);
    }

    [Fact]
    public void AStoppedQueueReportsItsNextIndexAndResumesFromIt()
    {
        using var rig = new Rig();
        Peer p = rig.AddClient("p");
        for (int i = 0; i < 5; i++)
            Assert.True(p.C.Alloc(4096).Ok);
        DriverQueue q = p.C.Driver.Queues[0];

        ushort next = p.T.Call(d => d.StopQueue(0));
        Assert.Equal(q.AvailIndex, next);
        Assert.False(p.T.Call(d => d.IsQueueStarted(0)));
        Assert.Equal(0, p.T.Call(d => d.StopQueue(9)));

        QueueSettings resume = q.Settings with { NextAvail = next };
        Assert.True(p.T.Call(d => d.TryStartQueue(0, resume)));
        Assert.True(p.C.Alloc(4096).Ok);
        Assert.Equal(6, p.Device.RegionsInUse);
    }

    [Fact]
    public void VringNeedEventMatchesTheVirtioDefinition()
    {
        Assert.True(SplitQueue.NeedEvent(0, 1, 0));
        Assert.False(SplitQueue.NeedEvent(1, 1, 0));
        Assert.True(SplitQueue.NeedEvent(4, 5, 2));
        Assert.False(SplitQueue.NeedEvent(5, 5, 2));
        Assert.True(SplitQueue.NeedEvent(ushort.MaxValue, 0, ushort.MaxValue)); // wrap-around
    }

    internal static bool WaitUntil(Func<bool> condition)
    {
        long deadline = Environment.TickCount64 + (long)Rig.Wait.TotalMilliseconds;
        while (!condition())
        {
            if (Environment.TickCount64 > deadline)
                return false;
            Thread.Sleep(1);
        }
        return true;
    }

    /// <summary>Guest RAM plus a huge phantom range that translates (to RAM's first byte) but is never
    /// dereferenced by the walker: enough to describe a chain longer than 4 GiB.</summary>
    private sealed class PhantomMemory(GuestRam ram, ulong phantomBase, ulong phantomLength) : IGuestMemory
    {
        public bool TryTranslate(ulong address, ulong length, out nint host)
        {
            if (address >= phantomBase && address - phantomBase <= phantomLength && length <= phantomLength - (address - phantomBase))
            {
                host = ram.HostAddress;
                return true;
            }
            return ram.TryTranslate(address, length, out host);
        }
    }
}
