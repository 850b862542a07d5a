using System.Diagnostics;
using Vism.Channel;

namespace Vism.Channel.Tests;

/// <summary>The bulk reader's distance from the writer (<see cref="ChannelOptions.ReadGap"/>): a
/// stream reader that has caught up waits while the writer keeps writing, takes what is there once
/// the writer stops, and small or message reads never wait for it. Over a real vhost-user socket
/// (2 MiB regions: rings of 1022 KiB).</summary>
public sealed class ReadGapTests
{
    private const int Slice = 64 << 10;
    private static readonly TimeSpan Limit = TimeSpan.FromMinutes(1);

    /// <summary>A channel pair over vhost-user with a 256 KiB gap and <paramref name="quiet"/>.</summary>
    private static async Task<(ChannelRig Rig, IsmChannel Writer, IsmChannel Reader)> PairAsync(TimeSpan quiet)
    {
        ChannelRig rig = await ChannelRig.StartAsync("vhost-user", new ChannelOptions { ReadGap = 256 << 10, ReadGapQuiet = quiet });
        try
        {
            (IsmChannel writer, IsmChannel reader) = await rig.PairAsync();
            return (rig, writer, reader);
        }
        catch
        {
            await rig.DisposeAsync();
            throw;
        }
    }

    /// <summary>One 64 KiB slice written and read whole (the reader is then a bulk reader); returns
    /// the reader's 256 KiB buffer.</summary>
    private static async Task<byte[]> StreamOneSliceAsync(IsmChannel writer, IsmChannel reader)
    {
        var buffer = new byte[256 << 10];
        await writer.WriteAllAsync(Pattern(Slice, 1));
        Assert.Equal(Slice, await reader.ReadSomeAsync(buffer));
        return buffer;
    }

    /// <summary>Runs <paramref name="body"/> on a thread of its own; an exception fails <paramref name="outcome"/>.</summary>
    private static void Start<T>(Action body, TaskCompletionSource<T> outcome) =>
        new Thread(() =>
        {
            try { body(); }
            catch (Exception e) { outcome.TrySetException(e); }
        }) { IsBackground = true, Name = "read-gap test" }.Start();

    private static byte[] Pattern(int length, int seed)
    {
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    [Fact]
    public async Task ABulkReaderThatCaughtUp_WaitsForTheGapWhileTheWriterKeepsWriting()
    {
        // A quiet time of a second: the writer below pauses 20-50 ms between slices and is still "writing".
        (ChannelRig rig, IsmChannel writer, IsmChannel reader) = await PairAsync(TimeSpan.FromSeconds(1));
        await using ChannelRig _ = rig;
        Assert.Equal(256 << 10, reader.ReadGap);
        byte[][] slices = [.. Enumerable.Range(0, 5).Select(i => Pattern(Slice, i))];
        var buffer = new byte[256 << 10];

        writer.WriteAll(slices[0]);
        Assert.Equal(Slice, reader.ReadSome(buffer)); // the first read does not wait: no stream yet
        Assert.Equal(slices[0], buffer[..Slice]);

        // Reader and writer on threads of their own: under a loaded test run, pool continuations
        // can be late by more than the quiet time.
        writer.WriteAll(slices[1]);
        var read = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var wrote = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
        Start(() => read.SetResult(reader.ReadSome(buffer)), read);
        Start(() =>
        {
            string? early = null;
            Thread.Sleep(50);
            for (int k = 2; k <= 4; k++)
            {
                if (read.Task.IsCompleted)
                    early ??= $"the read ended with {(k - 1) * 64} KiB ready while the writer was still writing";
                writer.WriteAll(slices[k]);
                if (k < 4) Thread.Sleep(20);
            }
            wrote.SetResult(early);
        }, wrote);
        Assert.Null(await wrote.Task.WaitAsync(Limit));
        Assert.Equal(256 << 10, await read.Task.WaitAsync(Limit));
        for (int k = 1; k <= 4; k++)
            Assert.Equal(slices[k], buffer[((k - 1) * Slice)..(k * Slice)]);
    }

    [Fact]
    public async Task ABulkReaderWhoseWriterStops_TakesWhatIsThere()
    {
        (ChannelRig rig, IsmChannel writer, IsmChannel reader) = await PairAsync(TimeSpan.FromMilliseconds(50));
        await using ChannelRig _ = rig;
        byte[] buffer = await StreamOneSliceAsync(writer, reader);

        byte[] tail = Pattern(Slice + 100, 2); // then the writer stops, well short of the gap
        await writer.WriteAllAsync(tail);
        int n = await reader.ReadSomeAsync(buffer).AsTask().WaitAsync(Limit);
        Assert.Equal(tail.Length, n);
        Assert.Equal(tail, buffer[..n]);

        // The writer closes mid-gap: the reader drains and sees the end instead of waiting.
        await writer.WriteAllAsync(Pattern(Slice, 3));
        Assert.Equal(Slice, await reader.ReadSomeAsync(buffer).AsTask().WaitAsync(Limit));
        await writer.WriteAllAsync(Pattern(1000, 4));
        writer.Dispose();
        Assert.Equal(1000, await reader.ReadSomeAsync(buffer).AsTask().WaitAsync(Limit));
        Assert.Equal(0, await reader.ReadSomeAsync(buffer).AsTask().WaitAsync(Limit));
    }

    [Fact]
    public async Task ACancelledAsyncRead_StopsWaitingForTheGap()
    {
        // A quiet time of a second: without the cancellation the read would return after it.
        (ChannelRig rig, IsmChannel writer, IsmChannel reader) = await PairAsync(TimeSpan.FromSeconds(1));
        await using ChannelRig _ = rig;
        byte[] buffer = await StreamOneSliceAsync(writer, reader);
        await writer.WriteAllAsync(Pattern(Slice, 2));
        using var cancel = new CancellationTokenSource();
        var cancelled = new TaskCompletionSource<bool>();
        Start(() => { Thread.Sleep(100); cancel.Cancel(); cancelled.SetResult(true); }, cancelled); // not a pool timer: see above
        var clock = Stopwatch.StartNew();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await reader.ReadSomeAsync(buffer, cancel.Token));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(1), $"the cancelled read took {clock.Elapsed.TotalMilliseconds:F0} ms: it waited out the quiet time");
        Assert.Equal(Slice, await reader.ReadSomeAsync(buffer)); // nothing was consumed
    }

    [Fact]
    public async Task SmallReadsAndMessages_AfterBulkReads_DoNotWaitForTheGap()
    {
        // A quiet time of a second: a read that waited for the gap would take at least that long.
        (ChannelRig rig, IsmChannel writer, IsmChannel reader) = await PairAsync(TimeSpan.FromSeconds(1));
        await using ChannelRig _ = rig;
        var big = new byte[256 << 10];
        for (int i = 0; i < 2; i++)
        {
            writer.WriteAll(Pattern(Slice, i));
            Assert.Equal(Slice, reader.ReadSome(big));
        }

        writer.WriteAll(Pattern(100, 5));
        var small = new byte[4096];
        var clock = Stopwatch.StartNew();
        Assert.Equal(100, reader.ReadSome(small));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(1), $"a 4 KiB read after bulk reads took {clock.Elapsed.TotalMilliseconds:F0} ms: it waited for the gap");

        writer.WriteAll(Pattern(Slice, 6));
        Assert.Equal(Slice, reader.ReadSome(big)); // bulk again
        writer.Send(Pattern(64, 7));
        clock.Restart();
        Assert.Equal(64, reader.Receive(small));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(1), $"a message after bulk reads took {clock.Elapsed.TotalMilliseconds:F0} ms: it waited for the gap");
    }

    [Fact]
    public async Task TheGapIsAtMostHalfTheRing_AndZeroTurnsItOff()
    {
        await using ChannelRig rig = await ChannelRig.StartAsync("vhost-user", new ChannelOptions()); // the default: half the ring
        (IsmChannel a, IsmChannel b) = await rig.PairAsync();
        Assert.Equal(a.RingSize / 2, a.ReadGap);
        Assert.Equal(b.RingSize / 2, b.ReadGap);
        await using ChannelRig off = await ChannelRig.StartAsync("mmio", new ChannelOptions { ReadGap = 0 });
        (IsmChannel c, _) = await off.PairAsync();
        Assert.Equal(0, c.ReadGap);
    }

    [Theory]
    [InlineData(-1L, 20.0, "ReadGap")]
    [InlineData((1L << 30) + 1, 20.0, "ReadGap")]
    [InlineData(1L << 20, 0.0, "ReadGapQuiet")]
    [InlineData(1L << 20, 2_000_000.0, "ReadGapQuiet")]
    public void BadReadGapOptions_AreRefusedByName(long gap, double quietMicroseconds, string name)
    {
        var options = new ChannelOptions { ReadGap = gap, ReadGapQuiet = TimeSpan.FromMicroseconds(quietMicroseconds) };
        ArgumentOutOfRangeException e = Assert.Throws<ArgumentOutOfRangeException>(() => ChannelDevice.Open("vhost-user", "/nonexistent/vism.sock", options));
        Assert.Equal(name, e.ParamName);
    }
}
