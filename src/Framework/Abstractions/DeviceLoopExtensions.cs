namespace Vism.Abstractions;

/// <summary>Helpers for calling into a loop from outside it (tests, hosts, drivers).</summary>
public static class DeviceLoopExtensions
{
    /// <summary>Runs <paramref name="work"/> on the loop and completes with its result or exception.
    /// Runs inline when already on the loop.</summary>
    /// <typeparam name="T">The result type.</typeparam>
    /// <param name="loop">The loop.</param>
    /// <param name="work">The work.</param>
    /// <returns>A task completed (asynchronously) with the result.</returns>
    public static Task<T> InvokeAsync<T>(this IDeviceLoop loop, Func<T> work)
    {
        if (loop.IsOnLoop)
        {
            try { return Task.FromResult(work()); }
            catch (Exception ex) { return Task.FromException<T>(ex); }
        }
        var tcs = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        loop.Post(() =>
        {
            try { tcs.SetResult(work()); }
            catch (Exception ex) { tcs.SetException(ex); }
        });
        return tcs.Task;
    }

    /// <summary>Runs <paramref name="work"/> on the loop and completes when it has run.</summary>
    /// <param name="loop">The loop.</param>
    /// <param name="work">The work.</param>
    /// <returns>A task completed when the work has run.</returns>
    public static Task InvokeAsync(this IDeviceLoop loop, Action work) =>
        loop.InvokeAsync(() => { work(); return true; });

    /// <summary>Runs an asynchronous <paramref name="work"/> on the loop (its awaits resume on the
    /// loop) and completes with its result.</summary>
    /// <typeparam name="T">The result type.</typeparam>
    /// <param name="loop">The loop.</param>
    /// <param name="work">The asynchronous work.</param>
    /// <returns>The work's task, observed from outside the loop.</returns>
    public static async Task<T> InvokeAsync<T>(this IDeviceLoop loop, Func<Task<T>> work)
    {
        Task<T> started = await loop.InvokeAsync<Task<T>>(work).ConfigureAwait(false);
        return await started.ConfigureAwait(false);
    }
}
