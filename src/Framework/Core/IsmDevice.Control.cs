using System.Buffers.Binary;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;
using Vism.Abstractions;
using Vism.Core.Registry;

namespace Vism.Core;

public sealed partial class IsmDevice
{
    /// <summary>Longest well-formed request: class, command and GRANT's 24 bytes.</summary>
    private const int MaxRequest = 2 + 24;

    /// <summary>The run serving the controlq, or null when it is idle.</summary>
    private ControlRun? _run;

    /// <summary>Regions whose permissions changed while this device references them; applied
    /// between control requests (<see cref="ApplyPermissionsAsync"/>). Loop only.</summary>
    private readonly HashSet<Region> _permissionChanges = [];

    /// <summary>Changes that waited for the transport to allow mapping again; retried at the next kick.</summary>
    private readonly HashSet<Region> _deferredPermissionChanges = [];

    private void KickControl()
    {
        if (_run is not null)
            return;
        if (_deferredPermissionChanges.Count > 0)
        {
            _permissionChanges.UnionWith(_deferredPermissionChanges);
            _deferredPermissionChanges.Clear();
        }
        bool requests = Running && _queues[Virtio.ControlQueue].Started;
        if (!requests && _permissionChanges.Count == 0)
            return;
        var run = new ControlRun();
        _run = run;
        _ = RunControlAsync(run);
    }

    /// <summary>A reset, a failure, a controlq stop or a disconnect: the request in flight, if any,
    /// completes into nothing, and the next kick starts a new run.</summary>
    private void EndControlRun()
    {
        _run?.End();
        _run = null;
    }

    /// <summary>Processes the controlq one request at a time: a request that maps memory completes
    /// only after the transport finished the mapping, and the next one is popped after that.
    /// Permission changes to regions this device references are applied before the next request,
    /// in the same sequence, so they never race a request's own mapping changes. After
    /// <see cref="DeviceLimits.RequestsPerTurn"/> requests or <see cref="DeviceLimits.DescriptorsPerTurn"/>
    /// descriptors walked the run yields the loop to the other devices on it, even when every request
    /// completed at once (an ERR ack does).</summary>
    private async Task RunControlAsync(ControlRun run)
    {
        try
        {
            DeviceQueue queue = _queues[Virtio.ControlQueue];
            int served = 0;
            long walked = queue.Ring.DescriptorsWalked;
            while (!run.Ended)
            {
                if (served >= _limits.RequestsPerTurn || queue.Ring.DescriptorsWalked - walked >= _limits.DescriptorsPerTurn)
                {
                    Counters.Increment("ctrl.yields");
                    await YieldLoopAsync();
                    served = 0;
                    walked = queue.Ring.DescriptorsWalked;
                    continue;
                }
                if (_permissionChanges.Count > 0)
                {
                    served++;
                    await ApplyPermissionsAsync(run);
                    continue;
                }
                if (!Running || !queue.Started || !queue.TryPop(out DescriptorChain? chain))
                    break;
                served++;
                // Notify writes the driver made before publishing this request are routed first.
                _services?.FlushNotifyWrites();
                await ProcessAsync(run, queue, chain);
            }
        }
        catch (ControlRun.RunEndedException)
        {
            // A reset, failure, queue stop or disconnect came while a request waited: it completes into nothing.
        }
        catch (Exception ex)
        {
            _log.LogCritical(ex, "device {Name} (devid {DevId}): control request processing failed", Description.Name, DevId);
            if (!run.Ended)
                Fail("internal", ex.Message);
        }
        finally
        {
            if (ReferenceEquals(_run, run))
                _run = null;
        }
    }

    /// <summary>Resumes on a later turn of the loop, after the fd events and work of the other devices.</summary>
    private Task YieldLoopAsync()
    {
        var turn = new TaskCompletionSource();
        Loop.Post(turn.SetResult);
        return turn.Task;
    }

    private async Task ProcessAsync(ControlRun run, DeviceQueue queue, DescriptorChain chain)
    {
        if (chain.WritableLength == 0)
        {
            Reject(new Refusal("ctrl.no-ack-space", $"request at descriptor {chain.Head} has no device-writable byte for the ack"));
            queue.Complete(chain, 0);
            return;
        }
        ControlReply reply = await ExecuteAsync(run, chain);
        if (run.Ended)
            return;
        Answer(queue, chain, reply);
    }

    /// <summary>Writes the ack (and the reply data of an OK) into the request's writable buffers
    /// and completes it; a refusal is counted and logged here.</summary>
    private void Answer(DeviceQueue queue, DescriptorChain chain, ControlReply reply)
    {
        Span<byte> bytes = stackalloc byte[1 + 16];
        int length = 1;
        if (reply.Refused is { } refusal)
        {
            Reject(refusal);
            bytes[0] = IsmControl.AckErr;
        }
        else
        {
            bytes[0] = IsmControl.AckOk;
            BinaryPrimitives.WriteUInt64LittleEndian(bytes[1..], reply.First);
            BinaryPrimitives.WriteUInt64LittleEndian(bytes[9..], reply.Second);
            length += reply.Length;
        }
        int written = chain.Write(_services!.Memory, 0, bytes[..length]);
        if (written < 0)
        {
            Fail("ring.buffer-unmapped", $"the reply buffer of descriptor {chain.Head} is no longer in guest memory");
            return;
        }
        queue.Complete(chain, (uint)written);
    }

    /// <summary>A decoded control request.</summary>
    private readonly record struct ControlRequest(byte Class, string Name, ulong A, ulong B, ulong C);

    /// <summary>Reads and checks one request (class, command, data length, reply space).</summary>
    private Refusal? Decode(DescriptorChain chain, out ControlRequest request)
    {
        request = default;
        uint readable = chain.ReadableLength;
        if (readable < 2)
            return new Refusal("ctrl.short-header", $"{readable} driver-readable bytes; class and command need 2");
        Span<byte> raw = stackalloc byte[MaxRequest];
        int take = (int)Math.Min(readable, (uint)MaxRequest);
        if (chain.Read(_services!.Memory, 0, raw[..take]) != take)
        {
            Fail("ring.buffer-unmapped", $"the request buffer of descriptor {chain.Head} is no longer in guest memory");
            throw new ControlRun.RunEndedException();
        }
        byte cls = raw[0];
        byte command = raw[1];
        (string name, int dataLength, int replyLength) = cls switch
        {
            IsmControl.ClassAlloc => ("alloc", 8, 16),
            IsmControl.ClassAttach => ("attach", 8, 8),
            IsmControl.ClassDetach => ("detach", 8, 0),
            IsmControl.ClassGrant => ("grant", 24, 0),
            IsmControl.ClassEventVector => ("event-vector", 16, 0),
            _ => ("", 0, 0),
        };
        if (name.Length == 0)
            return new Refusal("ctrl.unknown-class", $"class {cls}");
        if (command != IsmControl.CommandDefault)
            return new Refusal($"{name}.unknown-command", $"command {command}");
        uint data = readable - 2;
        if (data < dataLength)
            return new Refusal($"{name}.short", $"{data} data bytes, {dataLength} expected");
        if (data > dataLength)
            return new Refusal($"{name}.oversized", $"{data} data bytes, {dataLength} expected");
        if (chain.WritableLength < 1 + replyLength)
            return new Refusal($"{name}.reply-space", $"{chain.WritableLength} device-writable bytes, {1 + replyLength} needed");
        request = new ControlRequest(cls, name, BinaryPrimitives.ReadUInt64LittleEndian(raw[2..]),
            BinaryPrimitives.ReadUInt64LittleEndian(raw[10..]), BinaryPrimitives.ReadUInt64LittleEndian(raw[18..]));
        return null;
    }

    /// <summary>Decodes and runs one request.</summary>
    private async ValueTask<ControlReply> ExecuteAsync(ControlRun run, DescriptorChain chain)
    {
        if (Decode(chain, out ControlRequest r) is { } malformed)
            return malformed;
        ControlReply reply = r.Class switch
        {
            IsmControl.ClassAlloc => await AllocAsync(run, r.A),
            IsmControl.ClassAttach => await AttachAsync(run, r.A),
            IsmControl.ClassDetach => await DetachAsync(run, r.A),
            IsmControl.ClassGrant => Grant(r.A, r.B, r.C),
            _ => EventVector(r.A, r.B),
        };
        if (reply.Refused is null)
            Counters.Increment($"ctrl.{r.Name}.ok");
        return reply;
    }

    /// <summary>What a control request produced: a refusal (an ERR ack), or OK with
    /// <see cref="Length"/> bytes of reply data (<see cref="First"/>, then <see cref="Second"/>).</summary>
    private readonly record struct ControlReply(Refusal? Refused, int Length, ulong First, ulong Second)
    {
        public static ControlReply Ok => default;

        public static ControlReply Of(ulong first) => new(null, 8, first, 0);

        public static ControlReply Of(ulong first, ulong second) => new(null, 16, first, second);

        public static implicit operator ControlReply(Refusal refusal) => new(refusal, 0, 0, 0);
    }

    private async ValueTask<ControlReply> AllocAsync(ControlRun run, ulong size)
    {
        ulong regionSize = Description.RegionSize;
        if (size == 0)
            return new Refusal("alloc.zero-size", "a region of 0 bytes");
        if (size > regionSize)
            return new Refusal("alloc.too-large", $"{size} bytes > region_size {regionSize}");
        ulong page = _memory.PageSize;
        if (page == 0 || page % DeviceLayout.PageSize != 0)
            return new Refusal("alloc.backend-page-size", $"the memory backend's page size {page} is not a multiple of {DeviceLayout.PageSize}");
        ulong length = DeviceLayout.RoundUp(size, page);
        if (length > regionSize)
            return new Refusal("alloc.page-too-large", $"{size} bytes round up to {length} with {page}-byte pages, more than region_size {regionSize}");
        // Refused before any memory is claimed; the slot itself is taken once the memory is there,
        // so an allocation abandoned while the backend works holds no slot.
        if (_slots.InUse >= Description.MaxRegions)
            return new Refusal("alloc.no-slot", $"all {Description.MaxRegions} region slots are in use");

        ulong token = Host.NewToken();
        // A reset, a controlq restart or the device's removal that comes while the backend works
        // ends the run: nobody will know this region, so its memory goes back at once.
        (IMemoryBlock? block, Refusal refused) = await run.AwaitAsync(
            _memory.AllocatesOffLoop ? AllocateOffLoopAsync(length, token) : Task.FromResult(Allocate(length, token)),
            abandoned => { if (abandoned.Block is not null) DiscardBlock(abandoned.Block); });
        if (block is null)
            return refused;
        if (block.Length < length || block.Length > regionSize || block.Length % DeviceLayout.PageSize != 0 || block.Offset % DeviceLayout.PageSize != 0)
        {
            string what = $"the memory backend returned {block.Length} bytes at offset {block.Offset} for {length}";
            DiscardBlock(block, "alloc.bad-block-discarded");
            return new Refusal("alloc.backend-bad-block", what);
        }
        int slot = _slots.Take();
        if (slot < 0)
        {
            DiscardBlock(block);
            return new Refusal("alloc.no-slot", $"all {Description.MaxRegions} region slots are in use");
        }
        Region region = Host.CreateRegion(this, slot, token, block, size);
        var entry = new SlotEntry(region, writable: true);
        _regions.Add(slot, entry);
        RefreshMemoryUsage();
        Counters.Increment("regions.allocated");

        string? mapFailure = await run.AwaitAsync(MapAsync(slot, block, writable: true)); // a reset releases the region
        if (mapFailure is not null)
        {
            DropSlot(slot, entry);
            return new Refusal("alloc.map-failed", mapFailure);
        }
        entry.Mapped = true;
        return ControlReply.Of(token, (ulong)slot * regionSize);
    }

    /// <summary>Calls the backend; an exception, or a refusal without a counter, becomes an
    /// <see cref="IMemoryBackend.AllocNoMemory"/> refusal.</summary>
    private (IMemoryBlock? Block, Refusal Refused) Allocate(ulong length, ulong token)
    {
        try
        {
            IMemoryBlock? block = _memory.TryAllocate(length, token, out Refusal refused);
            if (block is null && string.IsNullOrEmpty(refused.Counter))
                refused = new Refusal(IMemoryBackend.AllocNoMemory, refused.Detail ?? "the memory backend gave no reason");
            return (block, refused);
        }
        catch (Exception ex)
        {
            return (null, new Refusal(IMemoryBackend.AllocNoMemory, $"the memory backend threw {ex.GetType().Name}: {ex.Message}"));
        }
    }

    /// <summary>Runs <see cref="Allocate"/> on a thread-pool thread and resumes on the loop, so a
    /// slow claim holds up only this device's controlq, not the other devices of the loop.</summary>
    private Task<(IMemoryBlock? Block, Refusal Refused)> AllocateOffLoopAsync(ulong length, ulong token)
    {
        // Completed on the loop thread, so the awaiting continuation runs there.
        var done = new TaskCompletionSource<(IMemoryBlock?, Refusal)>();
        Counters.Increment("alloc.off-loop");
        ThreadPool.UnsafeQueueUserWorkItem(_ =>
        {
            (IMemoryBlock? Block, Refusal Refused) result = Allocate(length, token);
            try
            {
                Loop.Post(() => done.SetResult(result));
            }
            catch (Exception ex)
            {
                // The loop is gone (the host stopped while the backend worked): nobody will take
                // the block, and nothing may escape from a thread-pool thread.
                _log.LogWarning("device {Name}: an allocation finished after the device's loop stopped ({Error}); its memory is released",
                    Description.Name, ex.Message);
                if (result.Block is not null)
                    DiscardBlock(result.Block, onLoop: false);
            }
        }, null);
        return done.Task;
    }

    /// <summary>Returns the memory of a block no region was made of, and disposes it. Unlike
    /// <see cref="FreeBlock"/> this releases even while the host shuts down: a region nobody was
    /// told about must not persist.</summary>
    private void DiscardBlock(IMemoryBlock block, string counter = "alloc.abandoned", bool onLoop = true) =>
        ReleaseAndDispose(block, release: true, counter, refreshUsage: onLoop);

    private async ValueTask<ControlReply> AttachAsync(ControlRun run, ulong token)
    {
        int slot = _slots.Take();
        if (slot < 0)
            return new Refusal("attach.no-slot", $"all {Description.MaxRegions} region slots are in use");
        if (Host.TryAttach(this, slot, token, out Region? region, out bool writable) is { } refused)
        {
            _slots.Return(slot);
            return refused;
        }
        var entry = new SlotEntry(region!, writable);
        _regions.Add(slot, entry);
        Counters.Increment("regions.attached");

        string? mapFailure = await run.AwaitAsync(MapAsync(slot, region!.Block, writable));
        if (mapFailure is not null)
        {
            DropSlot(slot, entry);
            return new Refusal("attach.map-failed", mapFailure);
        }
        entry.Mapped = true;
        return ControlReply.Of((ulong)slot * Description.RegionSize);
    }

    private async ValueTask<ControlReply> DetachAsync(ControlRun run, ulong offset)
    {
        if (!TryFindSlot(offset, out int slot, out SlotEntry? entry))
            return new Refusal("detach.not-assigned", $"no region at offset 0x{offset:x}");
        if (entry.Mapped && await run.AwaitAsync(UnmapAsync(offset, entry.Region.Length)) is { } failure)
            return new Refusal("detach.unmap-failed", failure);
        DropSlot(slot, entry);
        if (_eventContext is not null)
            CallEvents(e => e.OnRegionDetached(new RegionSlot(slot, offset)), "OnRegionDetached");
        Counters.Increment("regions.detached");
        return ControlReply.Ok;
    }

    /// <summary>The registry changed the permissions of <paramref name="region"/>, which this device
    /// references: re-check its mapping on this device's loop, between control requests.
    /// Any thread.</summary>
    internal void PermissionsChanged(Region region)
    {
        if (!Loop.IsOnLoop)
        {
            Loop.Post(() => PermissionsChanged(region));
            return;
        }
        _permissionChanges.Add(region);
        KickControl();
    }

    /// <summary>Applies one pending permission change (v1: "the driver can set the read and write
    /// permissions after it is attached"): without ATTACH or READ the region is unmapped and
    /// dropped as if this device had detached it; otherwise a mapping whose writability no longer
    /// matches WRITE is replaced by one that does (unmap, then map again at the same offset).</summary>
    private async ValueTask ApplyPermissionsAsync(ControlRun run)
    {
        Region region = _permissionChanges.First();
        int slot = -1;
        SlotEntry? entry = null;
        foreach ((int s, SlotEntry e) in _regions)
        {
            if (ReferenceEquals(e.Region, region))
                (slot, entry) = (s, e);
        }
        if (entry is null || !entry.Mapped)
        {
            _permissionChanges.Remove(region); // detached meanwhile (or never mapped): nothing to change
            return;
        }
        IsmPermissions now = Host.PermissionsOf(region, DevId);
        bool keep = Region.AllowsMapping(now);
        bool writable = (now & IsmPermissions.Write) != 0;
        if (keep && writable == entry.Writable)
        {
            _permissionChanges.Remove(region);
            return;
        }
        ulong offset = (ulong)slot * Description.RegionSize;
        ITransportServices? services = _services;
        if (services is null || !services.CanMap)
        {
            // Kept pending: applied at the next kick, once the transport can change mappings again.
            Counters.Increment("perm.live.deferred");
            _permissionChanges.Remove(region);
            _deferredPermissionChanges.Add(region);
            return;
        }
        _permissionChanges.Remove(region);
        string? failure;
        try
        {
            failure = await services.UnmapAsync(ShmId.Regions, offset, region.Length);
        }
        catch (Exception ex)
        {
            failure = $"{ex.GetType().Name}: {ex.Message}";
        }
        if (run.Ended)
            return; // reset meanwhile: every attachment is released anyway
        if (failure is not null)
        {
            Fail("perm.live.unmap-failed", $"the region at 0x{offset:x} could not be unmapped after its permissions changed to {now}: {failure}");
            return;
        }
        entry.Mapped = false;
        if (keep)
        {
            failure = await MapAsync(slot, region.Block, writable);
            if (run.Ended)
                return;
            if (failure is null)
            {
                entry.Mapped = true;
                entry.Writable = writable;
                Counters.Increment(writable ? "perm.live.remapped-rw" : "perm.live.remapped-ro");
                _log.LogInformation("device {Name} (devid {DevId}): region at 0x{Offset:x} remapped {Mode} after its permissions changed to {Permissions}",
                    Description.Name, DevId, offset, writable ? "read-write" : "read-only", now);
                return;
            }
            _log.LogWarning("device {Name} (devid {DevId}): region at 0x{Offset:x} could not be mapped again after its permissions changed ({Failure}); it is dropped as if detached",
                Description.Name, DevId, offset, failure);
        }
        DropSlot(slot, entry);
        if (_eventContext is not null)
            CallEvents(e => e.OnRegionDetached(new RegionSlot(slot, offset)), "OnRegionDetached");
        Counters.Increment("perm.live.revoked");
        _log.LogInformation("device {Name} (devid {DevId}): region at 0x{Offset:x} unmapped and dropped: its permissions changed to {Permissions} (ATTACH and READ are needed to keep it)",
            Description.Name, DevId, offset, now);
    }

    private ControlReply Grant(ulong offset, ulong peer, ulong permissions)
    {
        if (!TryFindSlot(offset, out _, out SlotEntry? entry))
            return new Refusal("grant.not-assigned", $"no region at offset 0x{offset:x}");
        if ((permissions & ~(ulong)IsmPermissions.All) != 0)
            return new Refusal("grant.bad-permissions", $"permissions 0x{permissions:x} have undefined bits");
        if (Host.TryGrant(entry.Region, this, peer, (IsmPermissions)permissions) is { } refused)
            return refused;
        _log.LogDebug("device {Name}: region at 0x{Offset:x}: permissions of {Peer} set to {Permissions}",
            Description.Name, offset, peer == 0 ? "the default entry" : $"devid {peer}", (IsmPermissions)permissions);
        return ControlReply.Ok;
    }

    private ControlReply EventVector(ulong offset, ulong vector)
    {
        if (!Features.Has(DriverFeatures, Features.IsmEventIrq))
            return new Refusal("event-vector.not-negotiated", "VIRTIO_ISM_F_EVENT_IRQ was not negotiated");
        if (!TryFindSlot(offset, out int slot, out _))
            return new Refusal("event-vector.not-assigned", $"no region at offset 0x{offset:x}");
        if (_eventContext is null)
            return new Refusal("event-vector.no-channel", "the event channel is not active");
        Refusal refusal = new(IEventChannel.EventVectorRejected, "the event channel failed");
        bool bound = false;
        CallEvents(e => bound = e.TryBindVector(new RegionSlot(slot, offset), vector, out refusal), "TryBindVector");
        return bound ? ControlReply.Ok : refusal;
    }

    private bool TryFindSlot(ulong offset, out int slot, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out SlotEntry? entry)
    {
        slot = -1;
        entry = null;
        ulong regionSize = Description.RegionSize;
        if (offset % regionSize != 0 || offset / regionSize >= (ulong)Description.MaxRegions)
            return false;
        slot = (int)(offset / regionSize);
        return _regions.TryGetValue(slot, out entry);
    }

    private async ValueTask<string?> MapAsync(int slot, IMemoryBlock block, bool writable)
    {
        ITransportServices? services = _services;
        if (services is null || !services.CanMap)
            return "the transport cannot change mappings now";
        string? size = block.CheckSize();
        if (size is not null)
        {
            RateLimitedLog.Count(Counters, _log, LogLevel.Error, "err.map.size-mismatch",
                "device {Name} (devid {DevId}): the region's backing is refused for mapping: {Problem}", Description.Name, DevId, size);
            return $"the region's backing changed size: {size}";
        }
        ReadOnlyBlock? readOnly = null;
        try
        {
            // Without WRITE the peer gets a descriptor that cannot write: no writable mapping, no
            // ftruncate or fallocate, no seals, whatever its VMM does with the map's flags.
            if (!writable)
                readOnly = new ReadOnlyBlock(block);
            return await services.MapAsync(ShmId.Regions, (ulong)slot * Description.RegionSize, readOnly ?? block, block.Length, writable);
        }
        catch (Exception ex)
        {
            return $"{ex.GetType().Name}: {ex.Message}";
        }
        finally
        {
            readOnly?.Dispose();
        }
    }

    /// <summary>A block seen through a read-only descriptor of its file (what a peer without WRITE
    /// receives); the descriptor is closed on dispose, the block itself is untouched.</summary>
    private sealed class ReadOnlyBlock(IMemoryBlock inner) : IMemoryBlock
    {
        public SafeFileHandle Handle { get; } = Native.Fd.ReopenReadOnly(inner.Handle);

        public ulong Offset => inner.Offset;

        public ulong Length => inner.Length;

        public void Release() => throw new InvalidOperationException("a read-only view is never released");

        public void Dispose() => Handle.Dispose();
    }

    private async ValueTask<string?> UnmapAsync(ulong offset, ulong length)
    {
        ITransportServices? services = _services;
        if (services is null || !services.CanMap)
            return "the transport cannot change mappings now";
        try
        {
            return await services.UnmapAsync(ShmId.Regions, offset, length);
        }
        catch (Exception ex)
        {
            return $"{ex.GetType().Name}: {ex.Message}";
        }
    }

    /// <summary>Forgets a slot and drops its reference (the region is freed when it was the last).</summary>
    private void DropSlot(int slot, SlotEntry entry)
    {
        _regions.Remove(slot);
        _slots.Return(slot);
        Host.Release(entry.Region, this, slot, detach: true);
    }
}
