using System.Runtime.InteropServices;

namespace Vism.Abstractions;

/// <summary>
/// The single thread that owns a device. vism has one concurrency model: every device, its
/// transport and its event channel run on exactly one loop thread; a loop serves many devices
/// (a fixed pool, by default one loop per core). Nothing on a loop may block; work for another
/// device is handed to that device's loop with <see cref="Post"/>. The loop installs a
/// <see cref="SynchronizationContext"/>, so an <c>await</c> started on the loop resumes on it.
/// </summary>
public interface IDeviceLoop
{
    /// <summary>Whether the calling thread is this loop's thread.</summary>
    bool IsOnLoop { get; }

    /// <summary>Queues <paramref name="work"/> to run on the loop thread. Safe from any thread.
    /// An exception thrown by <paramref name="work"/> is logged and does not stop the loop.</summary>
    /// <param name="work">The work item.</param>
    void Post(Action work);

    /// <summary>Calls <paramref name="onReadable"/> on the loop whenever <paramref name="fd"/> is
    /// readable (level-triggered) or has hung up. Dispose the result to stop watching; this must
    /// happen before the descriptor is closed.</summary>
    /// <param name="fd">An open file descriptor the caller keeps alive while watched.</param>
    /// <param name="onReadable">Called on the loop thread.</param>
    /// <returns>A registration; disposing it removes the watch.</returns>
    IDisposable WatchReadable(SafeHandle fd, Action onReadable);

    /// <summary>Runs <paramref name="callback"/> once on the loop after <paramref name="due"/>, never
    /// earlier. Timers have microsecond resolution (a 50 µs delay means 50 µs plus the thread's
    /// wake-up); timers due at the same moment run in the order they were scheduled.</summary>
    /// <param name="due">Delay; zero or negative runs at the next turn of the loop.</param>
    /// <param name="callback">Called on the loop thread.</param>
    /// <returns>A registration; disposing it before it fires cancels it.</returns>
    IDisposable Schedule(TimeSpan due, Action callback);

    /// <summary>Calls <paramref name="look"/> on the loop at every turn of its busy polling (the
    /// host's <c>busy-poll</c> setting: after work, the loop keeps looking for more before it sleeps),
    /// never while the loop sleeps. A transport polls shared memory there (a NOTIFY window) instead of
    /// waiting for a timer or a doorbell. <paramref name="look"/> must be short and must return true
    /// when it found and did work (which keeps the loop busy-polling). A loop that does not
    /// busy-poll never calls it; the default implementation registers nothing.</summary>
    /// <param name="look">Called on the loop thread.</param>
    /// <returns>A registration; disposing it stops the calls.</returns>
    IDisposable OnBusyLook(Func<bool> look) => NoBusyLook.Instance;

    /// <summary>Tells the loop, from a timer callback on its thread, that the callback found and did work
    /// (a scan of polled memory found writes). A busy-polling loop then polls after it, as it does after
    /// an fd event or posted work; a timer that found nothing starts no polling, so an idle loop's
    /// periodic timers cost none. The default implementation does nothing.</summary>
    void FoundWork() { }
}

/// <summary>The registration <see cref="IDeviceLoop.OnBusyLook"/> returns where a loop has no busy polling.</summary>
internal sealed class NoBusyLook : IDisposable
{
    /// <summary>The one instance.</summary>
    public static readonly NoBusyLook Instance = new();

    /// <inheritdoc />
    public void Dispose()
    {
    }
}
