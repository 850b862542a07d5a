using System.Buffers.Binary;
using System.Security.Cryptography;
using Vism.Abstractions;
using Vism.Conformance.Composition;
using Vism.Conformance.Probes;
using Vism.Core;

namespace Vism.Conformance.Checks;

/// <summary>ATTACH and DETACH: tokens, sharing, slots, references.</summary>
internal static class AttachDetachChecks
{
    private const string Attach = "Attach ISM Region, device normative";
    private const string Detach = "Detach ISM Region, device normative";

    public static IEnumerable<ConformanceCheck> All =>
    [
        new("attach.unknown-token",
            "ATTACH with token 0, a random token or the token of a freed region is ERR",
            Statement.V1(Attach, "If the ism region specified by token does not exist, the device MUST set ack to VIRTIO_ISM_ERR."),
            UnknownToken),
        new("attach.shares-memory",
            "two devices share a region: each reads what the other wrote",
            Statement.V1("Attach ISM Region", "Based on controlq, the driver can request to attach an ism region with a specified token."),
            SharesMemory),
        new("attach.no-free-area",
            "ATTACH into a window with no free slot is ERR, and OK once a slot is free",
            Statement.V1(Attach, "If there is no free area of the shared memory space, the device MUST set ack to VIRTIO_ISM_ERR."),
            NoFreeArea),
        new("attach.pair-only",
            "sharing = pair: a third device cannot attach, also after the second detached; the second can again",
            Statement.V1(Attach, "After the attach operation, an ism region can ONLY be shared between these two guests, even if one of them operates detach, but as long as the ism region is not completely released, the ism region can only be re-attached by the previous guest and cannot share with other guests."),
            PairOnly),
        new("attach.multi-three",
            "sharing = multi: three devices attach one region and each sees the others' writes",
            Statement.Design("Decisions, Attach sharing", "the cover letter wants many peers. A per-host sharing = \"pair\" | \"multi\", default \"pair\"."),
            MultiThree),
        new("detach.unassigned",
            "DETACH of an offset holding no region (never, no longer, outside the window) is ERR",
            Statement.V1(Detach, "If the location specified by offset is not assigned an ism region, the device MUST set ack to VIRTIO_ISM_ERR."),
            Unassigned),
        new("detach.unmaps",
            "after DETACH the driver's window no longer maps the region",
            Statement.V1(Detach, "The device MUST release the physical memory of the ism region specified by offset from the guest."),
            Unmaps),
        new("detach.last-reference",
            "a region lives on (contents, token) while any device references it and is freed with the last reference",
            Statement.V1(Detach, "The device can only fully release an ism region after all devices have released references to the ism region."),
            LastReference),
        new("detach.peer-while-writing",
            "a device keeps writing a region without a fault while its peer detaches it",
            Statement.V1(Detach, "The device can only fully release an ism region after all devices have released references to the ism region."),
            PeerWhileWriting),
    ];

    private static void UnknownToken(CheckContext ctx)
    {
        Rig rig = ctx.Compose();
        rig.B.ExpectErr(rig.B.Client.Attach(0).Ack, "ATTACH with token 0");
        ulong random = BinaryPrimitives.ReadUInt64LittleEndian(RandomNumberGenerator.GetBytes(8)) | 1;
        rig.B.ExpectErr(rig.B.Client.Attach(random).Ack, $"ATTACH with the random token 0x{random:x16}");
        (ulong token, ulong offset) = rig.A.Alloc();
        rig.A.Detach(offset);
        rig.B.ExpectErr(rig.B.Client.Attach(token).Ack, "ATTACH with the token of a region its only device detached");
    }

    private static void SharesMemory(CheckContext ctx)
    {
        Rig rig = ctx.Compose();
        (ulong token, ulong a) = rig.A.Alloc();
        ulong b = rig.B.Attach(token);
        ulong last = rig.A.Client.RegionSize - 64;
        byte[] fromA = Patterns.Mark("a", 1);
        byte[] fromB = Patterns.Mark("b", 2);
        rig.A.Write(a, fromA);
        Patterns.ExpectSame(ctx, fromA, rig.B.Read(b, 64), "device b reading the start of the shared region");
        rig.B.Write(b, fromB, last);
        Patterns.ExpectSame(ctx, fromB, rig.A.Read(a, 64, last), "device a reading the end of the shared region");
    }

    private static void NoFreeArea(CheckContext ctx)
    {
        Rig rig = ctx.Compose();
        ulong token = rig.A.Alloc().Token;
        int slots = (int)(rig.B.Client.Transport.ShmLength(ShmId.Regions) / rig.B.Client.RegionSize);
        List<ulong> own = AllocChecks.Fill(ctx, rig.B, slots);
        ctx.Expect(own.Count == slots, $"device b could allocate only {own.Count} of its {slots} slots ({rig.B.Errors()})");
        rig.B.ExpectErr(rig.B.Client.Attach(token).Ack, "ATTACH with every slot of the window taken");
        rig.B.Detach(own[0]);
        ulong at = rig.B.Attach(token);
        ctx.Expect(at == own[0], $"the only free slot is at 0x{own[0]:x}, ATTACH answered 0x{at:x}");
    }

    private static void PairOnly(CheckContext ctx)
    {
        Rig rig = ctx.Compose(new HostSpec { Devices = 3, Sharing = SharingMode.Pair });
        (ulong token, ulong a) = rig.A.Alloc();
        ulong b = rig.B.Attach(token);
        rig.C.ExpectErr(rig.C.Client.Attach(token).Ack, "ATTACH by a third device while two share the region");
        rig.B.Detach(b);
        rig.C.ExpectErr(rig.C.Client.Attach(token).Ack, "ATTACH by a third device after the second detached (the region is not released)");
        b = rig.B.Attach(token);
        rig.A.Detach(a);
        rig.C.ExpectErr(rig.C.Client.Attach(token).Ack, "ATTACH by a third device after the allocating device detached");
        rig.A.Attach(token);
    }

    private static void MultiThree(CheckContext ctx)
    {
        Rig rig = ctx.Compose(new HostSpec { Devices = 3, Sharing = SharingMode.Multi });
        (ulong token, ulong a) = rig.A.Alloc();
        ulong[] at = [a, rig.B.Attach(token), rig.C.Attach(token)];
        for (int i = 0; i < 3; i++)
            rig.Peers[i].Write(at[i], Patterns.Mark(rig.Peers[i].Name, i), (ulong)(64 * i));
        for (int reader = 0; reader < 3; reader++)
            for (int writer = 0; writer < 3; writer++)
                Patterns.ExpectSame(ctx, Patterns.Mark(rig.Peers[writer].Name, writer), rig.Peers[reader].Read(at[reader], 64, (ulong)(64 * writer)),
                    $"device {rig.Peers[reader].Name} reading what device {rig.Peers[writer].Name} wrote");
    }

    private static void Unassigned(CheckContext ctx)
    {
        Rig rig = ctx.Compose(new HostSpec { Devices = 1 });
        Driver.IsmClient c = rig.A.Client;
        ulong window = c.Transport.ShmLength(ShmId.Regions);
        rig.A.ExpectErr(c.Detach(0), "DETACH of offset 0 with no region allocated");
        ulong o = rig.A.Alloc().Offset;
        ulong other = o == 0 ? c.RegionSize : 0;
        rig.A.ExpectErr(c.Detach(other), $"DETACH of the empty slot at 0x{other:x}");
        rig.A.ExpectErr(c.Detach(window), $"DETACH of 0x{window:x}, the end of the REGIONS window");
        rig.A.ExpectErr(c.Detach(ulong.MaxValue), "DETACH of offset 2^64 - 1");
        rig.A.Detach(o);
        rig.A.ExpectErr(c.Detach(o), $"DETACH of 0x{o:x} a second time");
    }

    private static void Unmaps(CheckContext ctx)
    {
        Rig rig = ctx.Compose(new HostSpec { Devices = 1 });
        ulong o = rig.A.Alloc().Offset;
        IReadOnlyList<MapsEntry> before = rig.A.Mapping(o);
        ctx.Expect(before.Count == 1 && before[0].Shared && before[0].Readable,
            $"the allocated region is not a shared mapping in the driver's window: {ProcMaps.Describe(before)}");
        rig.A.Detach(o);
        IReadOnlyList<MapsEntry> after = rig.A.Mapping(o);
        ctx.Expect(!after.Any(e => e.Shared), $"after DETACH the driver's window still maps shared memory there: {ProcMaps.Describe(after)}");
        ctx.Expect(!SafeMemory.TryRead(rig.A.Address(o), new byte[1]), "after DETACH the region's first byte is still readable in the driver's window");
    }

    private static void LastReference(CheckContext ctx)
    {
        Rig rig = ctx.Compose();
        (ulong token, ulong a) = rig.A.Alloc();
        ulong b = rig.B.Attach(token);
        byte[] p = Patterns.Mark("a", 1);
        rig.A.Write(a, p);
        rig.A.Detach(a);
        Patterns.ExpectSame(ctx, p, rig.B.Read(b, 64), "device b reading the region after device a detached it");
        byte[] q = Patterns.Mark("b", 2);
        rig.B.Write(b, q);
        ctx.Expect(rig.Snapshot().Regions.Count == 1, "the host does not list the region while device b still references it");
        a = rig.A.Attach(token);
        Patterns.ExpectSame(ctx, q, rig.A.Read(a, 64), "device a reading the region after attaching it again");
        rig.A.Detach(a);
        rig.B.Detach(b);
        HostSnapshot after = rig.Snapshot();
        ctx.Expect(after.Regions.Count == 0, $"the host still lists {after.Regions.Count} region(s) after every reference was detached");
        ulong used = after.Devices[0].Memory.Used;
        ctx.Expect(used == 0, $"device a's memory still holds {used} bytes after the last reference was detached");
        rig.B.ExpectErr(rig.B.Client.Attach(token).Ack, "ATTACH with the token of a fully released region");
    }

    private static void PeerWhileWriting(CheckContext ctx)
    {
        Rig rig = ctx.Compose();
        (ulong token, ulong a) = rig.A.Alloc();
        ulong b = rig.B.Attach(token);
        WhileWriting(ctx, writer: rig.B, writerOffset: b, detacher: rig.A, detacherOffset: a);
        a = rig.A.Attach(token);
        WhileWriting(ctx, writer: rig.A, writerOffset: a, detacher: rig.B, detacherOffset: b);
        rig.A.Detach(a);
        ctx.Expect(rig.Snapshot().Regions.Count == 0, "the region is still listed after both devices detached it");
    }

    /// <summary>Writes a counter through <paramref name="writer"/>'s window on another thread until
    /// well after <paramref name="detacher"/> detached, then checks no write faulted and the last value stuck.</summary>
    private static void WhileWriting(CheckContext ctx, Peer writer, ulong writerOffset, Peer detacher, ulong detacherOffset)
    {
        nint address = writer.Address(writerOffset);
        long writes = 0;
        long faultAt = -1;
        using var stop = new ManualResetEventSlim();
        var thread = new Thread(() =>
        {
            Span<byte> value = stackalloc byte[8];
            for (long n = 1; !stop.IsSet; n++)
            {
                BinaryPrimitives.WriteInt64LittleEndian(value, n);
                if (!SafeMemory.TryWrite(address + (nint)(8 * (n % 512)), value))
                {
                    Interlocked.Exchange(ref faultAt, n);
                    return;
                }
                Interlocked.Exchange(ref writes, n);
            }
        }) { IsBackground = true, Name = "vism-conformance-writer" };
        thread.Start();
        try
        {
            Func<long> progress = () => Interlocked.Read(ref faultAt) >= 0 ? long.MaxValue : Interlocked.Read(ref writes);
            WaitWrites(ctx, progress, 1000);
            detacher.Detach(detacherOffset);
            WaitWrites(ctx, progress, Interlocked.Read(ref writes) + 1000);
        }
        finally
        {
            stop.Set();
            thread.Join();
        }
        ctx.Expect(faultAt < 0, $"device {writer.Name}'s write number {faultAt} into the shared region faulted after device {detacher.Name} detached it");
        long last = Interlocked.Read(ref writes);
        byte[] stored = writer.Read(writerOffset, 8, (ulong)(8 * (last % 512)));
        ctx.Expect(BinaryPrimitives.ReadInt64LittleEndian(stored) == last, $"device {writer.Name}'s last write ({last}) did not stick");
    }

    private static void WaitWrites(CheckContext ctx, Func<long> count, long target)
    {
        long deadline = Environment.TickCount64 + (long)ctx.Options.EventTimeout.TotalMilliseconds;
        while (count() < target)
        {
            ctx.Expect(Environment.TickCount64 < deadline, $"the writer made {count()} writes, {target} expected within {ctx.Options.EventTimeout}");
            Thread.Sleep(1);
        }
    }
}
